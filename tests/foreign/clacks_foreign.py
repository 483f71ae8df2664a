"""A Clacks client in another language, written from docs/protocol.md alone.

Python's standard library plus pika (AMQP) and lxml (XSD validation), as Debian ships
them. It proves the wire contract is enough: calls, errors, forwarding, batches,
login and SCRAM over HTTP, rpc.discover, and an event received and validated against
the schema the agent hands out.

Run by tests/integration/foreign.rs:
    python3 clacks_foreign.py AMQP_URL DOMAIN HTTP_URL SCRAM_USER SCRAM_PASSWORD USER PASSWORD
It prints one line per check and exits 1 at the first that fails.
"""

import base64
import copy
import hashlib
import hmac
import http.cookiejar
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid

import pika
from lxml import etree

REPLY_TO = "amq.rabbitmq.reply-to"


class AmqpClient:
    """JSON-RPC over AMQP, §2 and §3: requests through the default exchange to
    D.command.<target>, replies on direct reply-to, matched by correlation id."""

    def __init__(self, url, domain):
        self.domain = domain
        params = pika.URLParameters(url)
        self.user = params.credentials.username
        self.connection = pika.BlockingConnection(params)
        self.channel = self.connection.channel()
        # Confirms and mandatory: a request nobody consumes comes back at once.
        self.channel.confirm_delivery()
        self.replies = {}
        self.channel.basic_consume(REPLY_TO, self._reply, auto_ack=True)

    def _reply(self, _channel, _method, properties, body):
        self.replies[properties.correlation_id] = body

    def send(self, request, queue=None, timeout=10.0):
        """Publishes a request object or batch; returns the decoded reply."""
        correlation = str(uuid.uuid4())
        properties = pika.BasicProperties(
            content_type="application/json",
            reply_to=REPLY_TO,
            correlation_id=correlation,
            user_id=self.user,
            expiration=str(int(timeout * 1000)),
        )
        target = queue or f"{self.domain}.command.core"
        self.channel.basic_publish("", target, json.dumps(request).encode(), properties, mandatory=True)
        deadline = time.monotonic() + timeout
        while correlation not in self.replies:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply to {request!r}")
            self.connection.process_data_events(time_limit=0.05)
        return json.loads(self.replies.pop(correlation))

    def call(self, method, params=None):
        request = {"jsonrpc": "2.0", "method": method, "id": 1}
        if params is not None:
            request["params"] = params
        return self.send(request)

    def result(self, method, params=None):
        reply = self.call(method, params)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def subscribe(self, event_types):
        """§6a: an exclusive auto-delete queue bound to D.event, one key per type."""
        queue = self.channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        for event_type in event_types:
            self.channel.queue_bind(queue, f"{self.domain}.event", routing_key=event_type)
        return queue

    def next_event(self, queue, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, properties, body = self.channel.basic_get(queue, auto_ack=True)
            if method is not None:
                return method.routing_key, properties, body
            self.connection.process_data_events(time_limit=0.05)
        raise TimeoutError("no event arrived")


class HttpClient:
    """JSON-RPC over HTTP, §7: POST /rpc with Content-Type application/json and the
    session cookie."""

    def __init__(self, url):
        self.url = url
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def call(self, method, params=None):
        request = {"jsonrpc": "2.0", "method": method, "id": 1}
        if params is not None:
            request["params"] = params
        body = json.dumps(request).encode()
        post = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        try:
            with self.opener.open(post, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read())

    def scram_login(self, user, password):
        """SCRAM-SHA-256 (RFC 5802/7677, no channel binding) through saslStart/saslStep."""
        b64 = lambda raw: base64.b64encode(raw).decode()
        nonce = b64(os.urandom(18))
        client_first_bare = f"n={user},r={nonce}"
        status, reply = self.call("saslStart", ["SCRAM-SHA-256", b64(("n,," + client_first_bare).encode())])
        check(status == 200 and reply["result"]["done"] is False, f"saslStart answers a challenge ({status} {reply})")
        server_first = base64.b64decode(reply["result"]["data"]).decode()
        fields = dict(part.split("=", 1) for part in server_first.split(","))
        check(fields["r"].startswith(nonce), "the server nonce extends ours")
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        without_proof = f"c={b64(b'n,,')},r={fields['r']}"
        auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
        signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        status, reply = self.call("saslStep", [reply["result"]["conversation"], b64(f"{without_proof},p={b64(proof)}".encode())])
        check(status == 200 and reply["result"]["done"] is True, f"saslStep finishes ({status} {reply})")
        server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        expected = "v=" + b64(hmac.new(server_key, auth_message, "sha256").digest())
        check(base64.b64decode(reply["result"]["data"]).decode() == expected, "the server proves it knows the verifier")


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def main(amqp_url, domain, http_url, user, password, login_user, login_password):
    amqp = AmqpClient(amqp_url, domain)

    # §2/§3: a call and its reply; an error with its symbolic code.
    check(amqp.call("echo", ["hello"]) == {"jsonrpc": "2.0", "result": "hello", "id": 1}, "echo answers")
    error = amqp.call("noSuchCommand")["error"]
    check(error["code"] == -32601 and error["data"]["code"] == "COMMAND_NOT_DEFINED", "an unknown method is COMMAND_NOT_DEFINED")
    error = amqp.call("echo", [1, 2])["error"]
    check(error["data"]["code"] == "INVALID_PARAMS", "too many arguments are INVALID_PARAMS")

    # §5: a command only the other agent has, sent to D.command.core, is forwarded.
    check(amqp.result("whereElse") == "beta", "a call reaches the node that provides it, whichever took it")

    # §2: a batch gets an array of replies; a notification (no id) none.
    batch = [
        {"jsonrpc": "2.0", "method": "echo", "params": ["a"], "id": "x"},
        {"jsonrpc": "2.0", "method": "echo", "params": {"value": "b"}, "id": "y"},
        {"jsonrpc": "2.0", "method": "echo", "params": ["not answered"]},
    ]
    replies = sorted(amqp.send(batch), key=lambda r: r["id"])
    check([r["result"] for r in replies] == ["a", "b"], "a batch answers each call with an id, by position or by name")

    # §4: the API describes itself.
    document = amqp.result("rpc.discover")
    methods = {m["name"]: m for m in document["methods"]}
    check(document["openrpc"].startswith("1.3") and "getNodes" in methods, "rpc.discover lists the commands")
    node_row = methods["getNodes"]["result"]["schema"]["items"]
    check(set(node_row["properties"]) == {"node", "load", "workers", "methods", "lastSeenSecs", "self"}, "result schemas name the fields")
    nodes = amqp.result("getNodes")
    check(all(set(n) == set(node_row["properties"]) for n in nodes), "getNodes answers what its schema says")
    check(methods["echo"]["x-clacks-permission"] == f"x on {domain}.command.core.echo", "each command says what permission it needs")

    # §6a: subscribe, receive, validate against the schema the agent hands out.
    queue = amqp.subscribe(["Call"])
    schema = etree.XMLSchema(etree.fromstring(amqp.result("getEventSchema", ["Call"]).encode()))
    event = {"@type": "Call", "Type": "missed", "Id": "py-1", "Caller": "200", "Callee": "100", "Started": "2026-12-04T10:00:00Z"}
    check(amqp.result("sendEvent", [event]) == "Call", "sendEvent takes a map with @type")
    routing_key, properties, body = amqp.next_event(queue)
    envelope = etree.fromstring(body)
    check(routing_key == "Call" and properties.type == "Call", "the event arrives under its type")
    check(envelope.tag == "{http://clacks.org/ns/events}Event" and len(envelope) == 1, "the envelope holds one element")
    schema.assertValid(etree.ElementTree(copy.deepcopy(envelope[0])))
    check(envelope[0].findtext("{http://clacks.org/ns/events}Callee") == "100", "the event validates against getEventSchema")

    # §6a: a prefix is not a binding key. `Node*` bound literally matches nothing; `#`
    # bound and narrowed here receives the nodes' heartbeats.
    literal = amqp.subscribe(["Node*"])
    everything = amqp.subscribe(["#"])
    deadline = time.monotonic() + 10
    prefixed = None
    while prefixed is None and time.monotonic() < deadline:
        routing_key, _, _ = amqp.next_event(everything, timeout=max(0.1, deadline - time.monotonic()))
        if routing_key.startswith("Node"):
            prefixed = routing_key
    check(prefixed is not None, f"'#' narrowed to the prefix Node receives {prefixed}")
    method, _, _ = amqp.channel.basic_get(literal, auto_ack=True)
    check(method is None, "the binding key 'Node*' is a literal that matches no event type")

    # §7: HTTP — only JSON, a session by SCRAM, then calls.
    web = HttpClient(http_url)
    status, reply = web.call("ping")
    check(status == 401 and reply["error"]["data"]["code"] == "NOT_AUTHENTICATED", "HTTP without a session is 401")
    status, reply = web.call("saslMechanisms")
    check(status == 200 and "SCRAM-SHA-256" in reply["result"], "saslMechanisms is open without a session")
    status, reply = web.call("saslStart", ["SCRAM-SHA-1", ""])
    check(status == 401 and reply["error"]["data"]["code"] == "LOGIN_FAILED", "an unoffered mechanism is a failed login")
    web.scram_login(user, password)
    check(web.call("getSessionUser") == (200, {"jsonrpc": "2.0", "result": user, "id": 1}), "the SCRAM session is the user's")
    other = HttpClient(http_url)
    status, reply = other.call("login", [login_user, "wrong"])
    check(status == 401 and reply["error"]["data"]["code"] == "LOGIN_FAILED", "a wrong password is 401 LOGIN_FAILED")
    check(other.call("login", {"user": login_user, "password": login_password})[1].get("result") is True, "login opens a session")
    check(other.call("getSessionUser")[1]["result"] == login_user, "the login session is the user's")
    form = urllib.request.Request(http_url, b'{"jsonrpc":"2.0","method":"ping","id":1}', {"Content-Type": "text/plain"})
    try:
        web.opener.open(form, timeout=10)
        check(False, "plain text is refused")
    except urllib.error.HTTPError as refused:
        check(refused.code == 415, "a body that is not application/json is 415")
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:8])
