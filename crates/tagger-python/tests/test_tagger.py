"""The `tagger` module against `agent run` on real daemons (driven by agent-bin's
tests/python_tagger.rs, which builds and installs the wheel and starts the daemons and a container).

Environment: AGENT_BIN (the agent binary), AGENT_CONFIG (its config), CONTAINER_ID, DOCKER_HOST
(the test dockerd, for `docker run`) and IMAGE (an image it has).
"""

import json
import os
import re
import socket
import subprocess
import threading
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


class HoldingProxy:
    """A TCP proxy in front of the agent's port that can hold back what the agent sends on the
    connections open so far, while later connections pass freely.

    Holding the replica's stream connection keeps every new event from the module, so a tag()
    that still finds a new container can only have fetched it.
    """

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.opened = 0
        self.held = set()
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self.lock:
                number = self.opened
                self.opened += 1
            threading.Thread(target=self.pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self.pipe, args=(upstream, client, number), daemon=True).start()

    def pipe(self, source, sink, number):
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                for s in (source, sink):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            while number is not None and self.is_held(number):
                time.sleep(0.01)
            try:
                sink.sendall(data)
            except OSError:
                return

    def is_held(self, number):
        with self.lock:
            return number in self.held

    def hold_open_connections(self):
        with self.lock:
            self.held = set(range(self.opened))
            return len(self.held)

    def release(self):
        with self.lock:
            self.held = set()

    def close(self):
        self.release()
        self.listener.close()


def test_a_container_started_a_moment_ago_is_tagged_at_once(running_agent):
    # The module follows the agent through a proxy, which then holds back the stream: the
    # replica cannot learn of the containers started below, so tag() finds their tags only by
    # fetching them from the agent (which asks dockerd).
    with open(CONFIG) as f:
        text = f.read()
    port = int(re.search(r"^cmd_port: (\d+)$", text, re.M).group(1))
    proxy = HoldingProxy(port)
    # Beside the agent's config, so that the default token and certificate paths are its own.
    proxied = os.path.join(os.path.dirname(CONFIG), "proxied.yaml")
    with open(proxied, "w") as f:
        f.write(re.sub(r"^cmd_port: \d+$", f"cmd_port: {proxy.port}", text, flags=re.M))
    try:
        assert tagger.connect(config=proxied)
        assert tagger.wait_ready(20.0)
        assert eventually(lambda: tagger.tag(CID, tagger.HIGH)), "the replica through the proxy"
        assert proxy.hold_open_connections() == 1, "one connection: the replica's stream"
        for n in range(3):
            started = subprocess.run(
                ["docker", "run", "-d", "--network", "none", "--label", f"team=fresh{n}", os.environ["IMAGE"], "sleep", "300"],
                capture_output=True, text=True, timeout=60,
            )
            assert started.returncode == 0, started.stderr
            cid = "container_id://" + started.stdout.strip()
            assert f"team:fresh{n}" in tagger.tag(cid, tagger.HIGH), f"container {n}"
            assert f"team:fresh{n}" in tagger.tag(cid, tagger.LOW)
        assert proxy.opened == 2, "the fetches shared one connection of their own"
    finally:
        proxy.close()
        assert tagger.connect(config=CONFIG)
        assert tagger.wait_ready(20.0)


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
