"""Run the whole HiddenScope product from ``deploy/docker-compose.yml`` — with Docker
(``docker compose up``) or without it, as local processes (``python -m hiddenscope_stack up``).

* :mod:`hiddenscope_stack.compose` — reads the compose file (``${VAR:-default}`` interpolation,
  ``.env``) into plain service specs;
* :mod:`hiddenscope_stack.runner` — starts those services as local processes (host names mapped
  to 127.0.0.1, ports remapped when taken, the named volumes as local directories), waits for
  their own healthchecks in ``depends_on`` order, and stops them by process group;
* :mod:`hiddenscope_stack.demo` — uploads the demo dataset through the gateway;
* :mod:`hiddenscope_stack.probe` — the HTTP healthcheck command the compose file uses.
"""
