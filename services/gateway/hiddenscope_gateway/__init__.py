"""HiddenScope gateway: one base URL for the ingest and match APIs (a streaming reverse proxy).

The route table lives in :mod:`hiddenscope_gateway.settings` (``DEFAULT_ROUTES``); the proxy in
:mod:`hiddenscope_gateway.app`.
"""
