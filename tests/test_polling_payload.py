"""A long-polling payload carries at most 16 packets: python-engineio's clients refuse a
payload of more (``Payload.max_decode_packets``) and stop polling for good, so a burst queued
for a polling client between two GETs must go out over several GETs. A real server, a raw
Engine.IO polling session (to see the payloads) and a real python-socketio polling client."""

from __future__ import annotations

import httpx


async def test_a_burst_for_a_polling_client_goes_out_in_payloads_of_at_most_16_packets(
    serve, connect
) -> None:
    server = serve({"server": {"ping_interval": 60, "ping_timeout": 30}})
    python_client = await connect(server, transports=["polling"], wait_welcome=True)
    await python_client.call("join-room", {"room": "burst"})
    base = f"{server.url}/socket.io/?EIO=4&transport=polling"
    async with httpx.AsyncClient(timeout=5) as http:
        sid = (await http.get(base)).text.split('"sid":"')[1].split('"')[0]
        url = f"{base}&sid={sid}"
        assert (await http.post(url, content=b"40")).text == "ok"
        await http.get(url)  # CONNECT ack (and the greeting)
        assert (await http.post(url, content=b'421["join-room",{"room":"burst"}]')).text == "ok"
        assert "431" in (await http.get(url)).text
        for n in range(40):  # queued for the raw session, which does not GET meanwhile
            resp = await http.post(server.url + "/rooms/burst/messages", json={"message": f"m{n}"})
            assert resp.status_code == 200
        sizes: list[int] = []
        got: list[str] = []
        while len(got) < 40:
            packets = (await http.get(url)).text.split("\x1e")
            sizes.append(len(packets))
            got += [p for p in packets if p.startswith('42["receive-message"')]
    assert max(sizes) == 16 and len(sizes) == 3, sizes
    assert got == [f'42["receive-message","m{n}"]' for n in range(40)]
    # python-socketio's own polling client got every one, in order, and still polls
    received = await python_client.wait_for("receive-message", count=40)
    assert received == [f"m{n}" for n in range(40)]
    assert (await python_client.call("my-rooms"))["ok"] is True
