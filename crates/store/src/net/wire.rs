//! Wire framing: one request or response per QUIC stream, as
//!
//! ```text
//! u32 BE header length | u32 BE body length | header bytes | body bytes
//! ```
//!
//! The header is a small serialized message (JSON, decoded by the layer
//! above); the body carries bulk bytes (chunk data) untouched, so 4 MiB of
//! data is never re-encoded. Both lengths are bounded and checked before
//! anything is allocated, and a stream that ends early is a
//! [`WireError::Truncated`], never a hang or a panic.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest header accepted (Raft batches and snapshots travel here).
pub const MAX_HEADER: usize = 16 << 20;
/// Largest body accepted (a chunk plus slack).
pub const MAX_BODY: usize = crate::chunk::MAX_CHUNK + (64 << 10);

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Serialized message.
    pub header: Vec<u8>,
    /// Bulk bytes.
    pub body: Bytes,
}

/// Framing errors.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The stream ended inside a frame.
    #[error("frame truncated: the peer sent {got} of {expected} bytes then closed the stream")]
    Truncated {
        /// Bytes the frame announced (so far).
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// A length field above its limit.
    #[error("frame {part} of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// "header" or "body".
        part: &'static str,
        /// Announced length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Bytes after the end of the frame.
    #[error("{0} unexpected bytes after the frame")]
    Trailing(usize),
    /// The header did not decode as the expected message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Transport error while reading or writing.
    #[error("stream I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes a frame into one buffer.
pub fn encode(header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + header.len() + body.len());
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(body);
    out
}

fn lengths(prefix: [u8; 8]) -> Result<(usize, usize), WireError> {
    let h = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    let b = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]) as usize;
    if h > MAX_HEADER {
        return Err(WireError::TooLarge {
            part: "header",
            len: h,
            max: MAX_HEADER,
        });
    }
    if b > MAX_BODY {
        return Err(WireError::TooLarge {
            part: "body",
            len: b,
            max: MAX_BODY,
        });
    }
    Ok((h, b))
}

/// Decodes exactly one frame from `buf`.
pub fn decode(buf: &[u8]) -> Result<Frame, WireError> {
    if buf.len() < 8 {
        return Err(WireError::Truncated {
            expected: 8,
            got: buf.len(),
        });
    }
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&buf[..8]);
    let (h, b) = lengths(prefix)?;
    let total = 8 + h + b;
    if buf.len() < total {
        return Err(WireError::Truncated {
            expected: total,
            got: buf.len(),
        });
    }
    if buf.len() > total {
        return Err(WireError::Trailing(buf.len() - total));
    }
    Ok(Frame {
        header: buf[8..8 + h].to_vec(),
        body: Bytes::copy_from_slice(&buf[8 + h..]),
    })
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    header: &[u8],
    body: &[u8],
) -> Result<(), WireError> {
    let mut prefix = [0u8; 8];
    prefix[..4].copy_from_slice(&(header.len() as u32).to_be_bytes());
    prefix[4..].copy_from_slice(&(body.len() as u32).to_be_bytes());
    w.write_all(&prefix).await?;
    w.write_all(header).await?;
    w.write_all(body).await?;
    Ok(())
}

/// Reads one frame; the stream may continue after it.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, WireError> {
    let mut prefix = [0u8; 8];
    read_full(r, &mut prefix, 8, 0).await?;
    let (h, b) = lengths(prefix)?;
    let mut header = vec![0u8; h];
    read_full(r, &mut header, 8 + h + b, 8).await?;
    // Read into spare capacity: no zeroing of up to 4 MiB first.
    let mut body = Vec::with_capacity(b);
    while body.len() < b {
        // `take`: never past the frame, whatever the capacity.
        let left = (b - body.len()) as u64;
        let n = (&mut *r).take(left).read_buf(&mut body).await?;
        if n == 0 {
            return Err(WireError::Truncated {
                expected: 8 + h + b,
                got: 8 + h + body.len(),
            });
        }
    }
    Ok(Frame {
        header,
        body: Bytes::from(body),
    })
}

async fn read_full<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    expected: usize,
    before: usize,
) -> Result<(), WireError> {
    let mut got = 0;
    while got < buf.len() {
        let n = r.read(&mut buf[got..]).await?;
        if n == 0 {
            return Err(WireError::Truncated {
                expected,
                got: before + got,
            });
        }
        got += n;
    }
    Ok(())
}

/// Serializes a message header.
pub fn to_header<T: serde::Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    serde_json::to_vec(msg).map_err(|e| WireError::Malformed(e.to_string()))
}

/// Deserializes a message header.
pub fn from_header<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[tokio::test]
    async fn round_trip_over_a_stream() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let body = vec![9u8; 100_000];
        let w = tokio::spawn(async move {
            write_frame(&mut a, b"{\"x\":1}", &body).await.unwrap();
            write_frame(&mut a, b"", b"").await.unwrap();
        });
        let f = read_frame(&mut b).await.unwrap();
        assert_eq!(f.header, b"{\"x\":1}");
        assert_eq!(f.body.len(), 100_000);
        let f = read_frame(&mut b).await.unwrap();
        assert!(f.header.is_empty() && f.body.is_empty());
        w.await.unwrap();
        // Stream closed: a clean truncation error, not a hang.
        assert!(matches!(
            read_frame(&mut b).await,
            Err(WireError::Truncated {
                expected: 8,
                got: 0
            })
        ));
    }

    #[tokio::test]
    async fn truncated_stream_is_a_typed_error() {
        let full = encode(b"header", b"body bytes");
        for cut in 0..full.len() {
            let mut r = &full[..cut];
            let err = read_frame(&mut r).await.unwrap_err();
            assert!(
                matches!(err, WireError::Truncated { .. }),
                "cut {cut}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn oversized_lengths_are_refused_before_allocating() {
        let mut huge = Vec::new();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        huge.extend_from_slice(&0u32.to_be_bytes());
        let err = read_frame(&mut &huge[..]).await.unwrap_err();
        assert!(
            matches!(err, WireError::TooLarge { part: "header", .. }),
            "{err}"
        );
        let mut body = Vec::new();
        body.extend_from_slice(&0u32.to_be_bytes());
        body.extend_from_slice(&(MAX_BODY as u32 + 1).to_be_bytes());
        let err = decode(&body).unwrap_err();
        assert!(
            matches!(err, WireError::TooLarge { part: "body", .. }),
            "{err}"
        );
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(h in prop::collection::vec(any::<u8>(), 0..300), b in prop::collection::vec(any::<u8>(), 0..3000)) {
            let f = decode(&encode(&h, &b)).unwrap();
            prop_assert_eq!(f.header, h);
            prop_assert_eq!(&f.body[..], &b[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&buf);
            let _ = from_header::<serde_json::Value>(&buf);
        }
    }
}
