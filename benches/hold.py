#!/usr/bin/env python3
"""Connection attacks for benches/slow.sh (loopback only, bounded in time).

    hold.py silent PORT SRC COUNT SECONDS   COUNT connections that send nothing
    hold.py hello  PORT SRC COUNT SECONDS   COUNT connections that send the
                                            first bytes of a TLS ClientHello
    hold.py loris  PORT SRC COUNT SECONDS   COUNT connections that send the
                                            start of an HTTP request header
                                            and stall
    hold.py keepalive PORT SRC COUNT SECONDS KEY  COUNT connections that make
                                            one signed API call each (answer
                                            read), then stay open
    hold.py flood  PORT SRC COUNT SECONDS   connections opened as fast as
                                            possible for SECONDS, the newest
                                            COUNT kept open

From the source address SRC to 127.0.0.1:PORT. silent/hello print "ready N"
once all N are open, hold them SECONDS, then close them and print "closed".
flood prints "opened N rate R/s" at the end. Connections the server refuses
or closes count as opened (the attacker does not wait for them).
"""

import collections
import socket
import sys
import time

# A TLS record header announcing a 512-byte ClientHello, and its first bytes.
PARTIAL_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
# The start of a request header (slowloris), never finished.
PARTIAL_HEADER = b"POST /billing/api/user_details_get HTTP/1.1\r\nHost: mor\r\nX-a: b\r\n"


def signed_call(key):
    import hashlib

    h = hashlib.sha1(b"1" + key.encode()).hexdigest()
    body = f"u=user1&user_id=1&hash={h}".encode()
    return (
        b"POST /billing/api/user_details_get HTTP/1.1\r\nHost: mor\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def connect(port, src):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    return s


def main():
    mode, port, src, count, seconds = sys.argv[1:6]
    port, count, seconds = int(port), int(count), float(seconds)
    if mode in ("silent", "hello", "loris", "keepalive"):
        call = signed_call(sys.argv[6]) if mode == "keepalive" else b""
        held = []
        for _ in range(count):
            try:
                s = connect(port, src)
                if mode == "hello":
                    s.send(PARTIAL_HELLO)
                elif mode == "loris":
                    s.send(PARTIAL_HEADER)
                elif mode == "keepalive":
                    # One call at a time: every connection is then an idle
                    # keep-alive one.
                    s.sendall(call)
                    s.settimeout(10)
                    got = s.recv(4096)
                    if b"200" not in got.split(b"\r\n", 1)[0]:
                        raise OSError(f"unexpected answer {got[:80]!r}")
                held.append(s)
            except OSError:
                pass
        print(f"ready {len(held)}", flush=True)
        time.sleep(seconds)
        for s in held:
            s.close()
        print("closed", flush=True)
    elif mode == "flood":
        kept = collections.deque()
        opened = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                kept.append(connect(port, src))
                opened += 1
            except OSError:
                time.sleep(0.001)
            while len(kept) > count:
                kept.popleft().close()
        rate = opened / seconds
        for s in kept:
            s.close()
        print(f"opened {opened} rate {rate:.0f}/s", flush=True)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
