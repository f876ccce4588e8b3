//! The start of an HTTP/2 connection with prior knowledge (RFC 9113 §3.4): the client preface,
//! then frames, up to the end of the first request's header block.
//!
//! A client that trickles its preface a byte at a time must not hold a connection slot for
//! longer than the head of an HTTP/1.1 request may take. HTTP/2 itself is served by the `h2`
//! crate; this scanner only watches the bytes on their way there and says when the first
//! request is complete, so the meter can close connections that never get that far within
//! `limits.header_read_timeout`. It reads frame headers only (9 bytes each) and skips payloads.

/// The client connection preface.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// Whether `prefix` (the first bytes of a connection) can be the start of [`PREFACE`].
pub fn may_be_preface(prefix: &[u8]) -> bool {
    let n = prefix.len().min(PREFACE.len());
    prefix[..n] == PREFACE[..n]
}

/// Follows the first bytes of an HTTP/2 connection; see the module documentation.
#[derive(Clone, Debug, Default)]
pub struct FirstRequest {
    /// Preface bytes matched so far.
    preface: usize,
    header: [u8; FRAME_HEADER],
    filled: usize,
    /// Payload bytes of the current frame still to skip.
    skip: u64,
    /// The frame whose payload is being skipped ends a header block.
    ends_block: bool,
    complete: bool,
    /// The preface did not match: not HTTP/2 (the HTTP/2 server will say so).
    broken: bool,
}

impl FirstRequest {
    /// Whether the first request's header block has arrived whole.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Follows `bytes`, the next bytes the client sent. Returns [`FirstRequest::is_complete`].
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() && !self.complete && !self.broken {
            if self.preface < PREFACE.len() {
                let n = bytes.len().min(PREFACE.len() - self.preface);
                if bytes[..n] != PREFACE[self.preface..self.preface + n] {
                    self.broken = true;
                    break;
                }
                self.preface += n;
                bytes = &bytes[n..];
            } else if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.skip -= n as u64;
                bytes = &bytes[n..];
                self.complete = self.skip == 0 && self.ends_block;
            } else {
                let n = bytes.len().min(FRAME_HEADER - self.filled);
                self.header[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
                self.filled += n;
                bytes = &bytes[n..];
                if self.filled == FRAME_HEADER {
                    self.filled = 0;
                    let [l0, l1, l2, kind, flags, ..] = self.header;
                    let length = u64::from(u32::from_be_bytes([0, l0, l1, l2]));
                    self.ends_block =
                        matches!(kind, HEADERS | CONTINUATION) && flags & END_HEADERS != 0;
                    self.skip = length;
                    self.complete = length == 0 && self.ends_block;
                }
            }
        }
        self.complete
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 1];
        out.extend_from_slice(payload);
        out
    }

    fn connection_start() -> Vec<u8> {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
        bytes.extend(frame(0x8, 0, &[0, 0, 1, 0])); // WINDOW_UPDATE
        bytes.extend(frame(HEADERS, 0x1, &[0x82; 20])); // HEADERS, END_STREAM only
        bytes.extend(frame(CONTINUATION, END_HEADERS, &[0x84; 7]));
        bytes
    }

    #[test]
    fn the_first_request_is_complete_at_the_end_of_its_header_block_however_bytes_trickle() {
        let bytes = connection_start();
        for piece in [1, 2, 5, 9, 10, 100] {
            let mut scan = FirstRequest::default();
            let mut done_at = None;
            for (i, chunk) in bytes.chunks(piece).enumerate() {
                if scan.feed(chunk) && done_at.is_none() {
                    done_at = Some(i);
                }
            }
            assert_eq!(
                done_at,
                Some((bytes.len() - 1) / piece),
                "complete exactly at the last byte, in pieces of {piece}"
            );
        }
    }

    #[test]
    fn settings_and_pings_alone_never_complete_a_request() {
        let mut scan = FirstRequest::default();
        let mut bytes = PREFACE.to_vec();
        for _ in 0..100 {
            bytes.extend(frame(0x6, 0, &[0; 8])); // PING
        }
        bytes.extend(frame(HEADERS, 0, &[0x82; 4])); // no END_HEADERS yet
        assert!(!scan.feed(&bytes));
        assert!(may_be_preface(b"PRI * HT"));
        assert!(!may_be_preface(b"GET / HTTP/1.1"));
        let mut broken = FirstRequest::default();
        assert!(!broken.feed(b"PRX * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
    }
}
