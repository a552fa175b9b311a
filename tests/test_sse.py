import pytest

from chatapp.core.sse import Event


def test_encode_message_frame():
    frame = Event('{"a":1}', event="message", id="5-0").encode()
    assert frame == b'id: 5-0\nevent: message\ndata: {"a":1}\n\n'


def test_multiline_data_becomes_several_data_lines():
    assert Event("a\nb\r\nc").encode() == b"data: a\ndata: b\ndata: c\n\n"


def test_retry_and_comment_open_a_stream():
    assert Event(retry=2000, comment="stream open").encode() == b": stream open\nretry: 2000\n\n"


def test_dict_data_is_json_on_one_line():
    assert Event({"reason": "x"}, event="retry").encode() == b'event: retry\ndata: {"reason":"x"}\n\n'


def test_id_with_newline_is_refused():
    with pytest.raises(ValueError):
        Event("x", id="1\n2").encode()
