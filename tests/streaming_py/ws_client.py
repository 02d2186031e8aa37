"""Drives ketch's streaming server with the websocket-client package, a
WebSocket implementation we did not write, speaking v4.channel.k8s.io.

usage: ws_client.py EXEC_URL PORTFORWARD_URL PORT
Prints a JSON object: stdout, stderr and exit code of the exec (parsed from
the Status on channel 3 the way the Kubernetes Python client does), and what
came back through the forwarded port.
"""

import json
import struct
import sys

import websocket

PROTOCOL = "v4.channel.k8s.io"


def read_channels(ws, until=None):
    channels = {}
    while True:
        try:
            opcode, data = ws.recv_data()
        except websocket.WebSocketConnectionClosedException:
            break
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
        if opcode != websocket.ABNF.OPCODE_BINARY or not data:
            continue
        channels.setdefault(data[0], bytearray()).extend(data[1:])
        if until and until(channels):
            break
    return channels


def exit_code(status):
    if status["status"] == "Success":
        return 0
    if status.get("reason") != "NonZeroExitCode":
        raise RuntimeError("exec failed: %s" % status)
    for cause in status["details"]["causes"]:
        if cause["reason"] == "ExitCode":
            return int(cause["message"])
    raise RuntimeError("no exit code in %s" % status)


def run_exec(url):
    ws = websocket.create_connection(url, subprotocols=[PROTOCOL], timeout=20)
    if ws.getsubprotocol() != PROTOCOL:
        raise RuntimeError("negotiated %r" % ws.getsubprotocol())
    ws.send_binary(b"\x00from python\n")
    channels = read_channels(ws)
    ws.close()
    status = json.loads(bytes(channels[3]).decode())
    return {
        "stdout": bytes(channels.get(1, b"")).decode(),
        "stderr": bytes(channels.get(2, b"")).decode(),
        "exit_code": exit_code(status),
    }


def run_port_forward(url, port):
    ws = websocket.create_connection(url, subprotocols=[PROTOCOL], timeout=20)
    # The first message on the data and the error channel is the port.
    channels = read_channels(ws, until=lambda c: len(c.get(0, b"")) >= 2 and len(c.get(1, b"")) >= 2)
    for ch in (0, 1):
        (got,) = struct.unpack("<H", bytes(channels[ch][:2]))
        if got != port:
            raise RuntimeError("channel %d announced port %d, not %d" % (ch, got, port))
    ws.send_binary(b"\x00echo via python")
    echoed = read_channels(ws, until=lambda c: len(c.get(0, b"")) >= len("echo via python"))
    ws.close()
    return bytes(echoed[0]).decode()


def main():
    exec_url, pf_url, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    result = run_exec(exec_url)
    result["forwarded"] = run_port_forward(pf_url, port)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
