#!/usr/bin/env python3
"""Connection attacks for benches/slow.sh (loopback only, bounded in time).

    hold.py silent PORT SRC COUNT SECONDS   COUNT connections that send nothing
    hold.py hello  PORT SRC COUNT SECONDS   COUNT connections that send the
                                            first bytes of a TLS ClientHello
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


def connect(port, src):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    return s


def main():
    mode, port, src, count, seconds = sys.argv[1:6]
    port, count, seconds = int(port), int(count), float(seconds)
    if mode in ("silent", "hello"):
        held = []
        for _ in range(count):
            try:
                s = connect(port, src)
                if mode == "hello":
                    s.send(PARTIAL_HELLO)
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
