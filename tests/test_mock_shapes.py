"""Response shapes of the mock (issue 11): headers, body framing, finish_reason variants, and what the
backend does when its client leaves. Every test talks to a real loopback socket; what the openai SDK,
``sl.record`` and nginx make of each shape is measured here, not assumed."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

import streamlab as sl
from streamlab import faults
from streamlab.faults import SpecError

ROOT = Path(__file__).resolve().parents[1]
MSG = [{"role": "user", "content": "hi"}]


def raw_exchange(port: int, path: str, *, stream: bool = True, headers: str = "", timeout: float = 10.0):
    """POST a chat request over a plain socket; return (status line + headers, body, arrival times of reads)."""
    body = json.dumps({"model": "m", "messages": MSG, "stream": stream}).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    t0 = time.perf_counter()
    sock.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 f"content-length: {len(body)}\r\n{headers}\r\n".encode() + body)
    data, reads = b"", []
    try:
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
            reads.append(time.perf_counter() - t0)
            if b"\r\n0\r\n\r\n" in data and b"transfer-encoding: chunked" in data.lower():
                break  # keep-alive: the chunked body is complete
            head_end = data.find(b"\r\n\r\n")
            if head_end > 0 and b"content-length:" in data[:head_end].lower():
                length = int(data[:head_end].lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(data) >= head_end + 4 + length:
                    break
    finally:
        sock.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest, reads


def header_dict(head: str) -> dict[str, str]:
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:])}


def sdk(base_url: str, **kw):
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=10, **kw)


def record_stream(base_url: str, expected: int, itl: float | None = None, **create):
    client = sdk(base_url)
    return sl.record(lambda: client.chat.completions.create(model="m", messages=MSG, stream=True, **create),
                     expected=expected, itl=itl)


# -- grammar ------------------------------------------------------------------------------------------


def test_shape_items_parse_validate_and_round_trip():
    fs, opts = faults.parse("accel=absent,ctype=plain,transfer=close,finish=usage,ondisconnect=continue,tokens=3")
    assert [f.spec() for f in fs] == ["accel=absent", "ctype=plain", "transfer=close", "finish=usage",
                                      "ondisconnect=continue"]
    assert opts == {"tokens": 3}
    assert faults.validate("transfer", "length") == ([faults.Transfer(value="length")], {})
    assert faults.to_spec(faults.AccelBuffering(value="yes"), tokens=4) == "accel=yes,tokens=4"
    assert faults.parse("ACCEL=No")[0] == [faults.AccelBuffering(value="no")]
    assert faults.shapes() == ["accel", "ctype", "transfer", "finish", "ondisconnect"]
    assert not set(faults.shapes()) & set(faults.names())  # the fault dropdown and outcome table stay numeric
    for bad in ("accel", "accel=maybe", "transfer@3=close", "ctype=text/html", "finish=" + "x" * 5000,
                "ondisconnect=later"):
        with pytest.raises(SpecError):
            faults.parse(bad)
    with pytest.raises(SpecError, match="one of chunked, length, close"):
        faults.Transfer(value="chunky")


def test_shape_errors_on_the_wire_are_400_json():
    with sl.MockLLM(tokens=2) as mock:
        for url, headers in ((f"{mock.url}/s/transfer=zip/v1/chat/completions", {}),
                             (f"{mock.url}/v1/chat/completions", {"x-streamlab": "accel=perhaps"})):
            r = httpx.post(url, json={"model": "m", "messages": MSG}, headers=headers)
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_streamlab_spec"


def test_shapes_apply_from_header_script_inject_and_cli():
    with sl.MockLLM(tokens=2) as mock:
        head, _, _ = raw_exchange(mock.port, "/v1/chat/completions", headers="x-streamlab: accel=absent\r\n")
        assert "x-accel-buffering" not in header_dict(head)
        with mock.script("ctype=plain", faults.AccelBuffering(value="yes")):
            h1, h2 = (header_dict(raw_exchange(mock.port, "/v1/chat/completions")[0]) for _ in range(2))
        assert h1["content-type"] == "text/plain; charset=utf-8" and h2["x-accel-buffering"] == "yes"
        with mock.inject(faults.Transfer(value="close")):
            head, _, _ = raw_exchange(mock.port, "/v1/chat/completions")
        assert head.startswith("HTTP/1.0 200")
    proc = subprocess.run([sys.executable, "-m", "streamlab", "mock", "--fault", "transfer=zip"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "transfer" in proc.stderr and "Traceback" not in proc.stderr


def test_shapes_from_the_cli_fault_flag_reach_the_wire():
    proc = subprocess.Popen([sys.executable, "-m", "streamlab", "mock", "--tokens", "3", "--fault",
                             "transfer=close,accel=absent"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        port = int(line.split("127.0.0.1:")[1].split("/")[0])
        head, body, _ = raw_exchange(port, "/v1/chat/completions")
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
    assert head.startswith("HTTP/1.0 200") and "x-accel-buffering" not in header_dict(head)
    assert body.endswith(b"data: [DONE]\n\n")


# -- headers ------------------------------------------------------------------------------------------


def test_default_stream_headers_are_unchanged():
    with sl.MockLLM(tokens=2) as mock:
        head, _, _ = raw_exchange(mock.port, "/v1/chat/completions")
    assert head.split("\r\n") == ["HTTP/1.1 200 OK", "x-request-id: 1",
                                  "content-type: text/event-stream; charset=utf-8", "cache-control: no-cache",
                                  "x-accel-buffering: no", "transfer-encoding: chunked"]


@pytest.mark.parametrize("spec, name, value", [
    ("accel=yes", "x-accel-buffering", "yes"), ("accel=absent", "x-accel-buffering", None),
    ("ctype=sse-bare", "content-type", "text/event-stream"), ("ctype=json", "content-type", "application/json"),
    ("ctype=octet", "content-type", "application/octet-stream"), ("ctype=absent", "content-type", None)])
def test_header_shapes_reach_the_wire_and_the_sdk_still_parses_the_stream(spec, name, value):
    """Measured: openai 2.x parses SSE whatever the Content-Type says (it never checks it for streams)."""
    with sl.MockLLM(tokens=5) as mock:
        head, _, _ = raw_exchange(mock.port, f"/s/{spec}/v1/chat/completions")
        assert header_dict(head).get(name) == value
        run = record_stream(f"{mock.url}/s/{spec}/v1", expected=5)
    assert run.outcome is sl.Outcome.COMPLETE and run.tokens == 5 and run.finish == "stop"


# -- framing ------------------------------------------------------------------------------------------


def test_transfer_length_generates_the_whole_answer_then_sends_it_at_once():
    itl, n = 0.1, 8
    with sl.MockLLM(tokens=n, itl=itl) as mock:
        head, body, reads = raw_exchange(mock.port, "/s/transfer=length/v1/chat/completions")
        headers = header_dict(head)
        assert "transfer-encoding" not in headers and int(headers["content-length"]) == len(body)
        assert body.endswith(b"data: [DONE]\n\n") and body.count(b"data: ") == n + 3
        assert reads[0] >= (n - 1) * itl * 0.9  # nothing, headers included, before the last token was due
        run = record_stream(f"{mock.url}/s/transfer=length/v1", expected=n, itl=itl)
        assert run.outcome is sl.Outcome.BUFFERED and run.tokens == n
        assert mock.journal.last.ended == "complete"


def test_transfer_close_is_an_http10_close_delimited_paced_body():
    itl, n = 0.1, 8
    with sl.MockLLM(tokens=n, itl=itl) as mock:
        head, body, reads = raw_exchange(mock.port, "/s/transfer=close/v1/chat/completions")
        headers = header_dict(head)
        assert head.startswith("HTTP/1.0 200 OK") and headers["connection"] == "close"
        assert "content-length" not in headers and "transfer-encoding" not in headers
        assert body.startswith(b"data: {") and body.endswith(b"data: [DONE]\n\n")  # no chunk-size lines
        assert reads[0] < (n - 1) * itl / 2 and reads[-1] >= (n - 1) * itl * 0.9  # paced, not held
        run = record_stream(f"{mock.url}/s/transfer=close/v1", expected=n, itl=itl)
        assert run.outcome is sl.Outcome.COMPLETE and run.tokens == n
        entry = mock.journal.last.wait_closed()
        assert entry.ended == "complete" and entry.disconnect is None


def test_cut_of_a_close_delimited_body_looks_like_its_end_to_the_sdk():
    """With no length and no chunks, the FIN of a cut *is* the end of the body: no exception at all."""
    with sl.MockLLM(tokens=20) as mock:
        run = record_stream(f"{mock.url}/s/transfer=close,cut@5/v1", expected=20)
        assert run.error is None and run.tokens == 5 and run.finish is None
        assert run.outcome is sl.Outcome.SILENT_TRUNCATION
        chunked = record_stream(f"{mock.url}/s/cut@5/v1", expected=20)
        assert isinstance(chunked.error, httpx.RemoteProtocolError)  # the same cut, chunked: an error


def test_cut_of_a_content_length_stream_is_no_response_at_all():
    with sl.MockLLM(tokens=20) as mock:
        run = record_stream(f"{mock.url}/s/transfer=length,cut@5/v1", expected=20)
    assert run.outcome is sl.Outcome.ERROR_BEFORE_STREAM and run.tokens == 0 and run.status is None


@pytest.mark.parametrize("transfer", ["chunked", "close"])
def test_non_streaming_answer_in_other_framings_parses_the_same(transfer):
    with sl.MockLLM(tokens=6) as mock:
        head, body, _ = raw_exchange(mock.port, f"/s/transfer={transfer}/v1/chat/completions", stream=False)
        assert "content-length" not in header_dict(head)
        answer = sdk(f"{mock.url}/s/transfer={transfer}/v1").chat.completions.create(model="m", messages=MSG)
    assert answer.choices[0].finish_reason == "stop" and answer.usage.completion_tokens == 6


NGINX = pytest.mark.skipif(not sl.nginx_available(), reason="nginx not installed")


PROXY_ITL, PROXY_N = 0.1, 8
LAST_DUE = (PROXY_N - 1) * PROXY_ITL  # when the last token is due


def through_proxy(prefer: str, spec: str, n: int = PROXY_N, itl: float = PROXY_ITL):
    with sl.MockLLM(tokens=n, itl=itl) as mock, \
            sl.proxy_for(upstream=mock, prefer=prefer, faults=sl.hops.nginx()) as proxy:
        if prefer == "nginx":
            assert proxy.kind.startswith("real nginx")
        run = record_stream(f"{proxy.url}/s/{spec}/v1", expected=n, itl=itl)
    return run, (run.content_arrivals[0] - run.t_call), (run.content_arrivals[-1] - run.content_arrivals[0])


@pytest.mark.parametrize("prefer", [pytest.param("nginx", marks=NGINX), "embedded"])
def test_close_delimited_body_is_held_by_nginx_buffering(prefer):
    """The llama-swap incident: what nginx receives is not chunked, so proxy_buffering holds it to the end."""
    run, first, spread = through_proxy(prefer, "transfer=close,accel=absent")
    assert run.outcome is sl.Outcome.BUFFERED and run.tokens == PROXY_N
    assert first >= LAST_DUE * 0.9 and spread < PROXY_ITL


@pytest.mark.parametrize("prefer", [pytest.param("nginx", marks=NGINX), "embedded"])
def test_accel_buffering_no_header_lets_nginx_stream(prefer):
    run, first, spread = through_proxy(prefer, "transfer=close,accel=no")
    assert run.outcome is sl.Outcome.COMPLETE and run.tokens == PROXY_N
    assert first < LAST_DUE / 2 and spread >= LAST_DUE * 0.8


@pytest.mark.parametrize("prefer", [pytest.param("nginx", marks=NGINX), "embedded"])
def test_chunked_body_streams_through_nginx_even_with_accel_yes(prefer):
    run, first, spread = through_proxy(prefer, "accel=yes")
    assert run.outcome is sl.Outcome.COMPLETE and first < LAST_DUE / 2 and spread >= LAST_DUE * 0.8


# -- finish_reason ----------------------------------------------------------------------------------


def test_finish_reason_null_then_done_is_silent_truncation():
    with sl.MockLLM(tokens=5) as mock:
        url = f"{mock.url}/s/finish=null/v1"
        run = record_stream(url, expected=5)
        assert run.outcome is sl.Outcome.SILENT_TRUNCATION and run.tokens == 5 and run.finish is None
        with sdk(url).chat.completions.stream(model="m", messages=MSG) as stream:
            final = stream.get_final_completion()  # the SDK's helper accepts it without a word
        assert final.choices[0].finish_reason is None and len(final.choices[0].message.content.split()) == 5
        answer = sdk(url).chat.completions.create(model="m", messages=MSG)
        assert answer.choices[0].finish_reason is None
        assert mock.journal.last.finish_reason is None


def test_wrong_finish_reason_makes_the_sdk_stream_helper_raise_length_error():
    with sl.MockLLM(tokens=5) as mock:
        url = f"{mock.url}/s/finish=wrong/v1"
        run = record_stream(url, expected=5)
        assert run.outcome is sl.Outcome.TRUNCATED_BY_LENGTH and run.tokens == 5 and run.finish == "length"
        with pytest.raises(openai.LengthFinishReasonError):
            with sdk(url).chat.completions.stream(model="m", messages=MSG) as stream:
                stream.get_final_completion()
        short = record_stream(url, expected=3, max_tokens=3)  # a real length cut is reported as "stop"
        assert short.finish == "stop" and short.tokens == 3


def test_finish_reason_only_on_usage_chunk_is_silent_truncation_for_a_loop_that_skips_usage_chunks():
    """OpenAI documents the usage chunk's ``choices`` as always empty, so code that skips it on
    ``chunk.usage`` never sees a reason sent there; the recorder and the SDK's helper read it."""
    with sl.MockLLM(tokens=5) as mock:
        url = f"{mock.url}/s/finish=usage/v1"
        reason, text = None, ""
        for chunk in sdk(url).chat.completions.create(model="m", messages=MSG, stream=True):
            if chunk.usage is not None:
                continue  # "the usage chunk": choices are documented empty
            text += chunk.choices[0].delta.content or ""
            reason = chunk.choices[0].finish_reason or reason
        assert reason is None and len(text.split()) == 5  # all the text, no reason: looks truncated
        with sdk(url).chat.completions.stream(model="m", messages=MSG) as stream:
            assert stream.get_final_completion().choices[0].finish_reason == "stop"
        run = record_stream(url, expected=5)
        assert run.outcome is sl.Outcome.COMPLETE and run.finish == "stop"
        assert mock.journal.last.finish_reason == "stop"


# -- the client leaving -----------------------------------------------------------------------------


def leave_after(url: str, seconds: float, *, stream: bool = True, chunks: int | None = None) -> float:
    """Read the answer and hang up after ``seconds`` without data (or after ``chunks`` reads)."""
    try:
        with httpx.Client(timeout=httpx.Timeout(10, read=seconds)) as client, \
                client.stream("POST", url + "/chat/completions",
                              json={"model": "m", "messages": MSG, "stream": stream}) as response:
            for i, _ in enumerate(response.iter_raw()):
                if chunks is not None and i + 1 >= chunks:
                    break
    except httpx.ReadTimeout:
        pass
    return time.perf_counter()


def test_disconnect_noticed_during_ttft_wait():
    with sl.MockLLM(tokens=5, ttft=5) as mock:
        left = leave_after(mock.base_url, 0.3)
        entry = mock.journal.last.wait_closed(4)
    assert entry.disconnect == "ttft wait" and entry.ended == "client disconnected"
    assert entry.t_end - left < 0.5  # noticed within the wait, not at the 5 s deadline
    assert entry.tokens_generated == entry.tokens_sent == 0


def test_disconnect_noticed_during_non_streaming_wait():
    with sl.MockLLM(tokens=5, itl=2) as mock:
        left = leave_after(mock.base_url, 0.3, stream=False)
        entry = mock.journal.last.wait_closed(4)
    assert entry.disconnect == "non-streaming wait" and entry.t_end - left < 0.5
    assert entry.tokens_generated == 1 and entry.status is None  # token 0 was due at once; nothing sent


def test_paid_tokens_keep_counting_after_the_client_left():
    with sl.MockLLM(tokens=40, itl=0.02) as mock:
        leave_after(f"{mock.url}/s/ondisconnect=continue/v1", 10, chunks=3)
        entry = mock.journal.last.wait_closed(5)
    assert entry.ended == "client disconnected" and entry.disconnect.startswith("at token ")
    assert entry.tokens_generated == 40 > entry.tokens_sent  # paid for all 40, sent a few
    assert entry.paid()["generated"] == 40 and entry.paid()["sent"] == entry.tokens_sent
    assert entry.t_end - entry.t_start >= 39 * 0.02 * 0.9  # it went on on its schedule


def test_backend_that_stops_pays_only_for_what_it_generated_before_noticing():
    with sl.MockLLM(tokens=40, itl=0.02) as mock:
        leave_after(f"{mock.url}/s/ondisconnect=stop/v1", 10, chunks=3)
        entry = mock.journal.last.wait_closed(5)
    assert entry.ended == "client disconnected" and entry.disconnect.startswith("at token ")
    assert entry.tokens_generated < 40 and entry.tokens_generated - entry.tokens_sent <= 1


def test_disconnect_in_a_stall_with_ondisconnect_continue_generates_the_rest():
    with sl.MockLLM(tokens=10, itl=0.01) as mock:
        leave_after(f"{mock.url}/s/stall@3,ondisconnect=continue/v1", 0.3)
        entry = mock.journal.last.wait_closed(5)
    assert entry.disconnect == "stall" and entry.tokens_sent == 3 and entry.tokens_generated == 10
