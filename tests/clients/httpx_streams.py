"""Many SSE streams on one httpx HTTP/2 connection: does every stream get every event at once?

Run by tests/it/clients.rs against a running sluice (h2c or TLS h2). Each run opens --streams
streams on one new connection to one topic, waits until all have the preamble, then publishes a
first and a last message; every stream must get each within --within seconds. Exits 1 at the first
run that fails, naming the streams that missed it and counting the streams on which the client's h2
layer had received it.

httpcore 1.0 (httpx 0.28) strands HTTP/2 events when one burst for many streams arrives in more
than one socket read, as sluice's fan-out does (one DATA frame per stream, each flushed when
produced) and as any TCP path may. A stream waiting for an event queues on the connection's read
lock; only the holder reads, and hands out what it read to the other streams' queues. A stream
whose event another stream has read sees it only once it holds the lock itself. If a stream queued
before it gets the lock with nothing to read, that one blocks in a socket read until the
connection's next bytes (some stream's heartbeat), and the stranded event waits with it. Sluice
sent the frames in time; httpcore does not hand them over. So, unless --stock-httpcore is given,
the script first makes waiting streams look again after every read (patch_httpcore_read_wakeups):
only sluice's side is under test.
"""

import argparse
import asyncio
import ssl
import sys
import time

import h2.connection
import h2.events
import httpcore
import httpx

PREAMBLE_DEADLINE = 10.0


def patch_httpcore_read_wakeups():
    """Lets a stream waiting on httpcore's HTTP/2 read lock return as soon as another stream's
    read has delivered its events, instead of waiting its turn behind a reader that may block for
    good."""
    connection = httpcore._async.http2.AsyncHTTP2Connection
    original = getattr(connection, "_receive_events", None)
    expected = ("self", "request", "stream_id")
    if original is None or original.__code__.co_varnames[:3] != expected:
        sys.exit("httpcore changed (_receive_events): review patch_httpcore_read_wakeups")

    async def receive_events(self, request, stream_id=None):
        # One reader at a time; everyone else waits for that read to finish, then looks again.
        while getattr(self, "_sluice_read_done", None) is not None:
            await self._sluice_read_done.wait()
            # A flow-control wait (stream_id None) re-checks its window in its caller.
            if stream_id is None or self._events.get(stream_id):
                return
        self._sluice_read_done = asyncio.Event()
        try:
            await original(self, request, stream_id)
        finally:
            done, self._sluice_read_done = self._sluice_read_done, None
            done.set()

    connection._receive_events = receive_events


class H2Received:
    """What the client's h2 state machine has received per stream (below httpcore), so a failure can
    say whether the data reached the client at all. Cleared for each run (stream ids repeat)."""

    def __init__(self):
        self.data = {}
        original = h2.connection.H2Connection.receive_data

        def receive_data(connection, data):
            events = original(connection, data)
            for event in events:
                if isinstance(event, h2.events.DataReceived):
                    self.data[event.stream_id] = self.data.get(event.stream_id, b"") + event.data
            return events

        h2.connection.H2Connection.receive_data = receive_data


class Stream:
    def __init__(self):
        self.opened = False
        self.data = []
        self.network_stream = None
        self.error = None


async def read_stream(client, url, stream, changed):
    """Reads one SSE stream until cancelled, recording its preamble and its `data:` lines."""
    try:
        async with client.stream("GET", url, headers={"accept": "text/event-stream"}) as response:
            if response.status_code != 200 or response.http_version != "HTTP/2":
                raise RuntimeError(f"status {response.status_code} over {response.http_version}")
            stream.network_stream = response.extensions.get("network_stream")
            pending = b""
            async for chunk in response.aiter_raw():
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.startswith(b":"):
                        stream.opened = True
                    elif line.startswith(b"data: "):
                        stream.data.append(line[6:].decode())
                changed.set()
        stream.error = "the stream ended"
        changed.set()
    except asyncio.CancelledError:
        raise
    except Exception as e:  # reported by the waiting loop, with the stream's number
        stream.error = repr(e)
        changed.set()


async def wait_for(streams, changed, done, deadline, what, marker, h2_received):
    """Waits until `done(stream)` holds for every stream, or fails the run after `deadline` s. On
    failure, says on how many streams the client's h2 layer had received `marker`."""
    start = time.monotonic()
    while True:
        failed = [i for i, s in enumerate(streams) if s.error]
        if failed:
            raise SystemExit(f"stream {failed[0]} failed: {streams[failed[0]].error}")
        if all(done(s) for s in streams):
            return time.monotonic() - start
        left = start + deadline - time.monotonic()
        if left <= 0:
            break
        changed.clear()
        try:
            await asyncio.wait_for(changed.wait(), left)
        except asyncio.TimeoutError:
            pass
    missing = [i for i, s in enumerate(streams) if not done(s)]
    arrived = sum(marker in data for data in h2_received.data.values())
    raise SystemExit(
        f"{what}: {len(missing)} of {len(streams)} streams had nothing after {deadline} s "
        f"(streams {missing[:12]}); the client's h2 layer had received it on {arrived} streams"
    )


async def one_run(args, run, ssl_context, h2_received):
    topic = f"/t/httpx-{run}"
    streams = [Stream() for _ in range(args.streams)]
    changed = asyncio.Event()
    limits = httpx.Limits(max_connections=1)
    timeout = httpx.Timeout(10.0, read=None)
    h2_received.data.clear()
    async with httpx.AsyncClient(
        http1=False, http2=True, verify=ssl_context, limits=limits, timeout=timeout
    ) as client, httpx.AsyncClient(timeout=timeout) as publisher:
        readers = [
            asyncio.create_task(read_stream(client, args.url + topic, s, changed)) for s in streams
        ]
        try:
            opened = await wait_for(
                streams,
                changed,
                lambda s: s.opened,
                PREAMBLE_DEADLINE,
                "preamble",
                b"retry:",
                h2_received,
            )
            connections = {id(s.network_stream) for s in streams}
            if len(connections) != 1:
                raise SystemExit(f"the streams used {len(connections)} connections, not one")
            times = []
            for message in ("first", "last"):
                response = await publisher.post(args.publish + topic, content=message.encode())
                if response.status_code != 202:
                    raise SystemExit(f"publish answered {response.status_code}")
                times.append(
                    await wait_for(
                        streams,
                        changed,
                        lambda s, m=message: m in s.data,
                        args.within,
                        message,
                        b"data: " + message.encode(),
                        h2_received,
                    )
                )
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    print(
        f"run {run}: opened {opened:.2f} s, first {times[0]:.3f} s, last {times[1]:.3f} s",
        flush=True,
    )


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="stream origin, e.g. https://localhost:8443")
    parser.add_argument("--publish", required=True, help="origin for POSTs (HTTP/1.1)")
    parser.add_argument("--cacert", help="the PEM certificate to trust for https")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--within", type=float, default=2.0, help="seconds per message")
    parser.add_argument(
        "--stock-httpcore", action="store_true", help="do not patch httpcore's read wake-ups"
    )
    args = parser.parse_args()
    if not args.stock_httpcore:
        patch_httpcore_read_wakeups()
    stock = " (stock)" if args.stock_httpcore else ""
    print(
        f"httpx {httpx.__version__}, httpcore {httpcore.__version__}{stock}, h2 {h2.__version__}: "
        f"{args.runs} runs of {args.streams} streams on {args.url}",
        flush=True,
    )
    h2_received = H2Received()
    ssl_context = ssl.create_default_context(cafile=args.cacert) if args.cacert else True
    for run in range(args.runs):
        try:
            await one_run(args, run, ssl_context, h2_received)
        except SystemExit as e:
            raise SystemExit(f"run {run}: {e}") from None


if __name__ == "__main__":
    asyncio.run(main())
