"""HiddenScope match service: dataset info, states/tokens/track windows, select, phrase search
and sharded match jobs over published datasets."""
