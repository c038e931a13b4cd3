//! Every protocol gives the same answer however its input is split: in one piece, one byte at a
//! time, and split in two at every byte boundary. Limits give their error and a close.

mod util;

use socketserver::protocol::{CloseRequest, Echo, Frame, Line, Protocol, Session};

/// What a protocol produced: its output and whether (and how) it asked to close.
fn run<P: Protocol>(protocol: P, pieces: &[&[u8]]) -> (Vec<u8>, Option<CloseRequest>) {
    let mut session = Session::new(protocol);
    for piece in pieces {
        session.feed(piece);
    }
    (session.take_output(), session.close_request())
}

/// Asserts that `input` gives the same result whole, byte by byte, and split at every boundary.
fn same_however_split<P: Protocol>(
    make: impl Fn() -> P,
    input: &[u8],
) -> (Vec<u8>, Option<CloseRequest>) {
    let whole = run(make(), &[input]);
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(
        run(make(), &bytes),
        whole,
        "one byte at a time differs from one piece"
    );
    for split in 0..=input.len() {
        let (head, tail) = input.split_at(split);
        assert_eq!(
            run(make(), &[head, tail]),
            whole,
            "split at byte {split} differs"
        );
    }
    whole
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

#[test]
fn echo_returns_every_byte_however_split() {
    let input = util::pattern(300, 3);
    let (output, close) = same_however_split(|| Echo, &input);
    assert_eq!(output, input);
    assert_eq!(close, None);
}

#[test]
fn line_echoes_complete_lines_however_split() {
    let input = b"first line\n\nthird\r\nunfinished";
    let (output, close) = same_however_split(Line::default, input);
    assert_eq!(output, b"first line\n\nthird\r\n");
    assert_eq!(close, None);
}

#[test]
fn line_keeps_a_partial_line_until_its_newline() {
    let mut session = Session::new(Line::default());
    session.feed(b"hel");
    assert!(session.take_output().is_empty());
    assert_eq!(session.buffered_input(), b"hel");
    session.feed(b"lo\nwor");
    assert_eq!(session.take_output(), b"hello\n");
    assert_eq!(session.buffered_input(), b"wor");
}

#[test]
fn an_over_long_line_gets_an_error_and_a_close_however_split() {
    let mut input = b"ok\n".to_vec();
    input.extend_from_slice(&[b'x'; 20]);
    input.extend_from_slice(b"\nnever answered\n");
    let (output, close) = same_however_split(|| Line::new(16), &input);
    assert_eq!(output, b"ok\nerror: line too long\n");
    assert!(
        matches!(close, Some(CloseRequest::Failed(_))),
        "close was {close:?}"
    );
}

#[test]
fn a_line_of_exactly_the_limit_is_accepted() {
    let mut input = vec![b'y'; 15];
    input.push(b'\n');
    let (output, close) = same_however_split(|| Line::new(16), &input);
    assert_eq!(output, input);
    assert_eq!(close, None);
}

#[test]
fn frame_echoes_complete_frames_however_split() {
    let mut input = frame(b"hello");
    input.extend(frame(b""));
    input.extend(frame(&util::pattern(40, 9)));
    let complete = input.clone();
    input.extend_from_slice(&frame(b"partial")[..6]);
    let (output, close) = same_however_split(Frame::default, &input);
    assert_eq!(output, complete);
    assert_eq!(close, None);
}

#[test]
fn an_oversized_frame_closes_without_buffering_however_split() {
    let mut input = frame(b"fine");
    input.extend_from_slice(&(1_000_000u32).to_be_bytes());
    input.extend_from_slice(b"some of the payload");
    let (output, close) = same_however_split(|| Frame::new(1024), &input);
    assert_eq!(output, frame(b"fine"));
    assert!(
        matches!(close, Some(CloseRequest::Failed(_))),
        "close was {close:?}"
    );
}

#[test]
fn every_protocol_closes_gracefully_at_end_of_input() {
    let mut echo = Session::new(Echo);
    echo.eof();
    assert_eq!(echo.close_request(), Some(CloseRequest::Graceful));
    let mut line = Session::new(Line::default());
    line.eof();
    assert_eq!(line.close_request(), Some(CloseRequest::Graceful));
    let mut framed = Session::new(Frame::default());
    framed.eof();
    assert_eq!(framed.close_request(), Some(CloseRequest::Graceful));
}

/// Every limit holds at its boundary: one below and exactly at it are accepted, one above is
/// refused, however the input is split.
#[test]
fn line_and_frame_limits_hold_at_their_boundaries() {
    let limit = 16;
    let line = |length: usize| {
        let mut line = vec![b'y'; length - 1];
        line.push(b'\n');
        line
    };
    for length in [limit - 1, limit] {
        let (output, close) = same_however_split(|| Line::new(limit), &line(length));
        assert_eq!((output.len(), close), (length, None), "a line of {length}");
    }
    let (output, close) = same_however_split(|| Line::new(limit), &line(limit + 1));
    assert_eq!(output, b"error: line too long\n");
    assert!(matches!(close, Some(CloseRequest::Failed(_))));

    for length in [limit - 1, limit] {
        let input = frame(&vec![b'f'; length]);
        let (output, close) = same_however_split(|| Frame::new(limit), &input);
        assert_eq!((output, close), (input, None), "a frame of {length}");
    }
    let (output, close) = same_however_split(|| Frame::new(limit), &frame(&vec![b'f'; limit + 1]));
    assert!(output.is_empty());
    assert!(matches!(close, Some(CloseRequest::Failed(_))));
}
