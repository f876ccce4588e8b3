//! TLS record boundaries in a byte stream (RFC 8446 §5.1), without decrypting anything.
//!
//! A tunnel carrying TLS that ends in the middle of a record was cut short; one that ends at a
//! record boundary ended cleanly as far as a relay can tell. The meter follows the record
//! headers of the destination's direction of a TLS tunnel to tell its access log which it was.

/// Follows TLS records through a stream, in whatever pieces the bytes arrive.
#[derive(Clone, Debug, Default)]
pub struct Records {
    header: [u8; 5],
    filled: usize,
    /// Bytes of the current record's body still to come.
    remaining: usize,
    /// A header whose content type is not a TLS record type: the stream is not TLS.
    lost: bool,
}

impl Records {
    /// Follows the next bytes of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.lost {
            if self.remaining > 0 {
                let n = self.remaining.min(bytes.len());
                self.remaining -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = bytes.len().min(5 - self.filled);
            self.header[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            if self.filled == 5 {
                self.filled = 0;
                // change_cipher_spec, alert, handshake, application_data, heartbeat.
                if !(0x14..=0x18).contains(&self.header[0]) || self.header[1] != 3 {
                    self.lost = true;
                }
                self.remaining = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
            }
        }
    }

    /// Whether the bytes so far end exactly at the end of a record (`None`: not TLS).
    pub fn at_boundary(&self) -> Option<bool> {
        (!self.lost).then_some(self.filled == 0 && self.remaining == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_at_a_boundary_only_between_records() {
        let mut stream = vec![0x17, 3, 3, 0, 4, 1, 2, 3, 4];
        stream.extend([0x15, 3, 3, 0, 2, 1, 0]);
        for piece in 1..stream.len() {
            let mut records = Records::default();
            let mut boundaries = Vec::new();
            let mut fed = 0;
            for chunk in stream.chunks(piece) {
                records.feed(chunk);
                fed += chunk.len();
                boundaries.push((fed, records.at_boundary()));
            }
            for (fed, at) in boundaries {
                assert_eq!(
                    at,
                    Some(fed == 9 || fed == stream.len()),
                    "piece {piece}, {fed}"
                );
            }
        }
        let mut plain = Records::default();
        plain.feed(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(plain.at_boundary(), None);
    }
}
