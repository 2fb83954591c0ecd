//! A response body read up to a cap: every collector that reads a body from a daemon or an
//! endpoint bounds it, so a huge answer is a clear error, never an unbounded allocation.

use std::fmt;

/// The error for a body larger than its cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub struct BodyTooLarge {
    /// The cap, in bytes.
    pub cap: usize,
}

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.cap >= 1 << 20 {
            write!(f, "the body is larger than {} MiB, the cap for this endpoint", self.cap >> 20)
        } else {
            write!(f, "the body is larger than {} bytes, the cap for this endpoint", self.cap)
        }
    }
}

/// A body being read chunk by chunk, refused as soon as it would pass its cap.
///
/// ```
/// # use wm_core::CappedBody;
/// let mut body = CappedBody::new(8, None).unwrap();
/// body.push(b"1234").unwrap();
/// assert!(body.push(b"56789").is_err());
/// ```
#[derive(Debug)]
pub struct CappedBody {
    bytes: Vec<u8>,
    cap: usize,
}

impl CappedBody {
    /// Starts a body of at most `cap` bytes, with room reserved for `content_length` bytes when
    /// it is given.
    ///
    /// # Errors
    ///
    /// Returns [`BodyTooLarge`] when `content_length` (the `Content-Length` header, when the
    /// server sent one) is already past the cap.
    pub fn new(cap: usize, content_length: Option<u64>) -> Result<Self, BodyTooLarge> {
        if content_length.is_some_and(|n| n > cap as u64) {
            return Err(BodyTooLarge { cap });
        }
        let expected = content_length.and_then(|n| usize::try_from(n).ok()).unwrap_or(0);
        Ok(Self { bytes: Vec::with_capacity(expected), cap })
    }

    /// Adds the next chunk.
    ///
    /// # Errors
    ///
    /// Returns [`BodyTooLarge`] when the chunk would take the body past its cap; the chunk is
    /// then not added.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), BodyTooLarge> {
        if self.bytes.len() + chunk.len() > self.cap {
            return Err(BodyTooLarge { cap: self.cap });
        }
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }

    /// Returns the bytes read.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_refused_at_its_cap_and_by_its_announced_length() {
        let mut body = CappedBody::new(4 << 20, Some(10)).unwrap();
        body.push(&[1; 4 << 19]).unwrap();
        body.push(&[2; 4 << 19]).unwrap();
        let error = body.push(&[3]).unwrap_err();
        assert_eq!(error.to_string(), "the body is larger than 4 MiB, the cap for this endpoint");
        assert_eq!(body.into_bytes().len(), 4 << 20);
        assert_eq!(CappedBody::new(100, Some(101)).unwrap_err(), BodyTooLarge { cap: 100 });
    }
}
