"""The strict multipart reader of POST /classify, on bodies built by httpx2 (a real client)."""

from __future__ import annotations

import httpx2
import pytest

from skipvit.service.multipart import MultipartError, TooManyParts, read_files


def encoded(files=None, data=None) -> tuple[str, bytes]:
    req = httpx2.Request("POST", "http://127.0.0.1/classify", files=files, data=data)
    return req.headers["content-type"], req.read()


def test_reads_the_files_parts_in_order_and_ignores_other_fields():
    blobs = [b"\x89PNG first", b"second\r\n--not-a-boundary\r\n", b""]
    ctype, body = encoded(
        files=[("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)], data={"note": "x"}
    )
    assert read_files(ctype, body) == [(f"{i}.png", b) for i, b in enumerate(blobs)]


def test_a_quoted_boundary_and_a_filename_with_a_semicolon():
    body = (
        b'--b;x\r\nContent-Disposition: form-data; name="files"; filename="a;b.png"\r\n\r\n'
        b"DATA\r\n--b;x--\r\n"
    )
    assert read_files('multipart/form-data; boundary="b;x"', body) == [("a;b.png", b"DATA")]


@pytest.mark.parametrize(
    ("ctype", "body", "message"),
    [
        ("application/json", b"{}", "not multipart"),
        (None, b"", "untyped"),
        ("multipart/form-data", b"--x\r\n", "no boundary"),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="files"\r\n\r\nab',
            "truncated",
        ),
        ("multipart/form-data; boundary=x", b"--x\r\nno separator\r\n--x--", "separator"),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Type: image/png\r\n\r\nab\r\n--x--",
            "Disposition",
        ),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="other"\r\n\r\nab\r\n--x--',
            "no part named 'files'",
        ),
    ],
)
def test_malformed_bodies_say_what_to_send(ctype, body, message):
    with pytest.raises(MultipartError, match=message) as e:
        read_files(ctype, body)
    assert "Hint" in str(e.value)


def test_more_files_than_the_limit_are_refused_before_the_parts_are_parsed():
    blob = b"\x89PNG x"
    ctype, body = encoded(
        files=[("files", (f"{i}.png", blob, "image/png")) for i in range(5)], data={"note": "x"}
    )
    assert len(read_files(ctype, body, max_files=5)) == 5  # a form field besides the files is fine
    with pytest.raises(TooManyParts, match="5 files in one request; the limit is 4"):
        read_files(ctype, body, max_files=4)
    # A flood of parts (here unparseable ones) is refused by counting, without reading any of them.
    flood = b"--x\r\n" + b"junk\r\n--x\r\n" * 1000 + b"junk\r\n--x--\r\n"
    with pytest.raises(TooManyParts, match="1001 parts in one request; the limit is 4 files"):
        read_files("multipart/form-data; boundary=x", flood, max_files=4)
    with pytest.raises(MultipartError, match="separator"):  # without a limit it is parsed, and refused
        read_files("multipart/form-data; boundary=x", flood)
