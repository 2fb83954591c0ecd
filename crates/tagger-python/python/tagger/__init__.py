"""The workload-metadata agent's tagger for Python checks (Datadog's `tagger` module calls).

    import tagger
    tags = tagger.tag("container_id://<id>", tagger.HIGH)

Tags come from a local replica of the agent's tags, kept up to date in the background: a call
is a local lookup. Any failure answers [] (logged, rate-limited, on the "tagger" logger).
"""

from ._tagger import HIGH, LOW, ORCHESTRATOR, connect, get_tags, tag, wait_ready

__all__ = ["LOW", "ORCHESTRATOR", "HIGH", "tag", "get_tags", "connect", "wait_ready"]
