"""The `tagger` module against `agent run` on real daemons (driven by agent-bin's
tests/python_tagger.rs, which builds and installs the wheel and starts the daemons and a container).

Environment: AGENT_BIN (the agent binary), AGENT_CONFIG (its config), CONTAINER_ID.
"""

import json
import os
import subprocess
import time

import pytest
import tagger

AGENT = os.environ["AGENT_BIN"]
CONFIG = os.environ["AGENT_CONFIG"]
CID = "container_id://" + os.environ["CONTAINER_ID"]


def agent(*args):
    return subprocess.run([AGENT, "--config", CONFIG, *args], capture_output=True, text=True, timeout=30)


def start_agent():
    process = subprocess.Popen([AGENT, "--config", CONFIG, "run"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        listed = agent("tagger-list", "--json")
        if listed.returncode == 0 and CID in json.loads(listed.stdout)["entities"]:
            return process
        time.sleep(0.2)
    process.kill()
    raise AssertionError("the agent did not tag the container within 30 s")


def stop_agent(process):
    process.terminate()
    process.wait(timeout=10)


def eventually(check, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    return check()


@pytest.fixture(scope="module")
def running_agent():
    process = start_agent()
    assert tagger.connect(config=CONFIG)
    assert tagger.wait_ready(20.0)
    yield process
    if process.poll() is None:
        stop_agent(process)


def listed_tags():
    entities = json.loads(agent("tagger-list", "--json").stdout)["entities"]
    return sorted({t for tags in entities[CID].values() for t in tags})


def test_tag_gives_what_tagger_list_prints(running_agent):
    tags = eventually(lambda: tagger.tag(CID, tagger.HIGH))
    assert sorted(set(tags)) == listed_tags()
    assert "team:py" in tags
    assert any(t.startswith("container_id:") for t in tags)
    low = tagger.tag(CID, tagger.LOW)
    assert "team:py" in low and not any(t.startswith("container_id:") for t in low)


def test_get_tags_takes_a_bool_or_a_cardinality(running_agent):
    assert sorted(tagger.get_tags(CID, True)) == sorted(tagger.tag(CID, tagger.HIGH))
    assert sorted(tagger.get_tags(CID, False)) == sorted(tagger.tag(CID, tagger.LOW))
    assert sorted(tagger.get_tags(CID, tagger.ORCHESTRATOR)) == sorted(tagger.tag(CID, tagger.ORCHESTRATOR))


def test_failures_answer_an_empty_list_never_an_exception(running_agent):
    assert tagger.tag("container_id://" + "0" * 64, tagger.HIGH) == []
    assert tagger.tag("not an entity id", tagger.HIGH) == []
    assert tagger.tag(CID, 42) == []
    assert tagger.tag(12345, tagger.HIGH) == []
    assert tagger.get_tags(CID, "high") == []


def test_wait_ready_refuses_nan_and_clamps_the_rest(running_agent):
    with pytest.raises(ValueError, match="NaN"):
        tagger.wait_ready(float("nan"))
    assert tagger.wait_ready(float("inf"))
    assert tagger.wait_ready(-1.0)


def test_a_stopped_agent_answers_empty_and_a_restarted_one_tags_again(running_agent):
    assert tagger.tag(CID, tagger.HIGH)
    stop_agent(running_agent)
    assert eventually(lambda: tagger.tag(CID, tagger.HIGH) == []), "stale tags from a stopped agent"
    restarted = start_agent()
    try:
        assert eventually(lambda: "team:py" in tagger.tag(CID, tagger.HIGH), timeout=40.0)
    finally:
        stop_agent(restarted)
