//! A raw HTTP/2 client, for frames no well-behaved client library would send: header blocks
//! encoded by hand (literal fields, nothing indexed, no Huffman), frames written as bytes, and
//! the meter's frames read back with their header blocks decoded.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const HEADERS: u8 = 0x1;
pub const DATA: u8 = 0x0;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// A frame: 9-byte header and payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with a 7-bit prefix (RFC 7541 §5.1).
fn integer(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128 + 128) as u8);
        n /= 128;
    }
    out.push(n as u8);
}

/// A header block of literal fields without indexing, names and values as given.
pub fn block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        integer(&mut out, name.len());
        out.extend_from_slice(name);
        integer(&mut out, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// A HEADERS frame carrying `fields` whole.
pub fn headers(stream: u32, fields: &[(&[u8], &[u8])], end_stream: bool) -> Vec<u8> {
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, &block(fields))
}

/// The fields of a plain GET to `shop-a.test` through the meter.
pub fn get_fields(path: &'static [u8]) -> Vec<(&'static [u8], &'static [u8])> {
    vec![
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"shop-a.test"),
        (b":path", path),
    ]
}

/// The fields of a POST to `shop-a.test` announcing a body of ten bytes.
pub fn post_fields() -> Vec<(&'static [u8], &'static [u8])> {
    vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"shop-a.test"),
        (b":path", b"/up"),
        (b"content-length", b"10"),
    ]
}

/// What the meter did with a stream or the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response head: its status and `x-proxy-telemetry-error`.
    Answered(u16, Option<String>),
    /// RST_STREAM with this error code.
    Reset(u32),
    /// GOAWAY with this error code.
    GoAway(u32),
    /// The connection closed with no frame about the stream.
    Closed,
    /// Nothing within the wait.
    Silent,
}

/// A connection to the meter speaking raw HTTP/2.
pub struct Client {
    pub stream: TcpStream,
    decoder: hpack::Decoder<'static>,
    buf: Vec<u8>,
    /// Outcomes of other streams read while waiting for one.
    seen: std::collections::HashMap<u32, Outcome>,
}

/// Error codes (RFC 9113 §7).
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

impl Client {
    /// Connects, sends the preface and an empty SETTINGS frame.
    pub async fn connect(address: std::net::SocketAddr) -> Client {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        let mut start = pt_sniff::h2::PREFACE.to_vec();
        start.extend(frame(SETTINGS, 0, 0, &[]));
        stream.write_all(&start).await.expect("preface");
        Client {
            stream,
            decoder: hpack::Decoder::new(),
            buf: Vec::new(),
            seen: std::collections::HashMap::new(),
        }
    }

    /// Sends frames; false if the meter closed the connection meanwhile.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    /// The next frame, or `None` when the connection closes or `wait` passes.
    async fn next_frame(&mut self, wait: Duration) -> Option<(u8, u8, u32, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let (kind, flags) = (self.buf[3], self.buf[4]);
                    let stream =
                        u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]])
                            & 0x7fff_ffff;
                    let payload = self.buf[9..9 + len].to_vec();
                    self.buf.drain(..9 + len);
                    return Some((kind, flags, stream, payload));
                }
            }
            let mut chunk = [0u8; 16384];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Sends a PING every 50 ms (up to ten seconds) until something ends the connection: that
    /// outcome, and how long it took.
    pub async fn ping_until_closed(&mut self) -> (Outcome, Duration) {
        let started = std::time::Instant::now();
        let mut outcome = Outcome::Silent;
        for i in 0..200u64 {
            self.send(&frame(PING, 0, 0, &i.to_be_bytes())).await;
            outcome = self.outcome(0, Duration::from_millis(50)).await;
            if outcome != Outcome::Silent {
                break;
            }
        }
        (outcome, started.elapsed())
    }

    /// What happens to `stream`: its response head, its reset, or the connection's end.
    /// SETTINGS, PING and WINDOW_UPDATE frames on the way are answered or skipped.
    pub async fn outcome(&mut self, stream: u32, wait: Duration) -> Outcome {
        if let Some(outcome) = self.seen.remove(&stream) {
            return outcome;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some((kind, flags, id, payload)) = self.next_frame(left).await else {
                return if tokio::time::Instant::now() >= deadline {
                    Outcome::Silent
                } else {
                    Outcome::Closed
                };
            };
            let outcome = match kind {
                HEADERS => {
                    // Decoded whatever the stream, to keep the decoder's table in step.
                    let fields = self.decoder.decode(&payload).unwrap_or_default();
                    let find = |name: &[u8]| {
                        fields
                            .iter()
                            .find(|(n, _)| n.as_slice() == name)
                            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    };
                    let status = find(b":status").and_then(|s| s.parse().ok()).unwrap_or(0);
                    Outcome::Answered(status, find(b"x-proxy-telemetry-error"))
                }
                RST_STREAM => Outcome::Reset(u32::from_be_bytes(
                    payload[..4].try_into().unwrap_or([0; 4]),
                )),
                GOAWAY => {
                    return Outcome::GoAway(u32::from_be_bytes(
                        payload[4..8].try_into().unwrap_or([0; 4]),
                    ));
                }
                SETTINGS if flags & 0x1 == 0 => {
                    let _ = self.send(&frame(SETTINGS, 0x1, 0, &[])).await;
                    continue;
                }
                _ => continue,
            };
            if id == stream {
                return outcome;
            }
            // The first thing that happened to another stream is its outcome.
            self.seen.entry(id).or_insert(outcome);
        }
    }
}
