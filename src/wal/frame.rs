//! Frame encoding: many records in one sled value, checked by a CRC.
//!
//! ```text
//! offset  size  field
//!      0     1  version         FRAME_VERSION (1)
//!      1     4  crc32 (LE)      CRC-32 (IEEE) of every byte from offset 5 to the end
//!      5     8  first_record    log-wide index of the frame's first record (LE u64)
//!     13     8  created_ms      wall clock when the frame was committed (LE u64)
//!     21     4  count (LE u32)  records in the payload
//!     25     …  payload         count × (tag u8, bincode body), see record::codec
//! ```
//! The key of a frame is its sequence number as a big-endian u64, so sled's
//! key order is log order.

use crate::record::{decode_record, Record};

pub(crate) const FRAME_VERSION: u8 = 1;
pub(crate) const HEADER_LEN: usize = 25;

/// Why a frame was not readable. The reader quarantines such frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Shorter than the fixed header.
    #[error("frame is {0} bytes, shorter than its {HEADER_LEN}-byte header")]
    Short(usize),
    /// The version byte is not one this build reads.
    #[error("unknown frame version {0}")]
    Version(u8),
    /// The payload does not match its CRC.
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    /// The CRC matched but a record did not decode.
    #[error("record {index} of {count} does not decode: {detail}")]
    Record {
        index: u32,
        count: u32,
        detail: String,
    },
    /// Bytes left over after the last record.
    #[error("{0} trailing bytes after the last record")]
    Trailing(usize),
}

/// The fixed part of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub first_record: u64,
    pub created_ms: u64,
    pub count: u32,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The frame's sequence number (its key).
    pub seq: u64,
    pub header: FrameHeader,
    pub records: Vec<Record>,
}

pub(crate) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub(crate) fn key_seq(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// Builds frames in a reusable buffer.
pub(crate) struct FrameBuilder {
    buf: Vec<u8>,
    count: u32,
}

impl FrameBuilder {
    pub(crate) fn new() -> Self {
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.resize(HEADER_LEN, 0);
        FrameBuilder { buf, count: 0 }
    }

    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    pub(crate) fn payload_len(&self) -> usize {
        self.buf.len() - HEADER_LEN
    }

    /// Appends already-encoded records (see `record::encode_record`).
    pub(crate) fn push_encoded(&mut self, bytes: &[u8], count: u32) {
        self.buf.extend_from_slice(bytes);
        self.count += count;
    }

    /// Writes the header and returns the finished frame bytes; the builder is
    /// reset for the next frame.
    pub(crate) fn seal(&mut self, first_record: u64, created_ms: u64) -> Vec<u8> {
        self.buf[0] = FRAME_VERSION;
        self.buf[5..13].copy_from_slice(&first_record.to_le_bytes());
        self.buf[13..21].copy_from_slice(&created_ms.to_le_bytes());
        self.buf[21..25].copy_from_slice(&self.count.to_le_bytes());
        let crc = crc32fast::hash(&self.buf[5..]);
        self.buf[1..5].copy_from_slice(&crc.to_le_bytes());
        let out = self.buf.clone();
        self.buf.truncate(HEADER_LEN);
        self.count = 0;
        out
    }
}

/// Reads and checks the header (version and CRC over the whole frame).
pub(crate) fn check(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
    let header = peek_header(bytes)?;
    let stored = u32::from_le_bytes(bytes[1..5].try_into().unwrap());
    let computed = crc32fast::hash(&bytes[5..]);
    if stored != computed {
        return Err(FrameError::Crc { stored, computed });
    }
    Ok(header)
}

/// Reads the header without checking the CRC (cheap; for accounting).
pub(crate) fn peek_header(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
    if bytes.len() < HEADER_LEN {
        return Err(FrameError::Short(bytes.len()));
    }
    if bytes[0] != FRAME_VERSION {
        return Err(FrameError::Version(bytes[0]));
    }
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    Ok(FrameHeader {
        first_record: u64_at(5),
        created_ms: u64_at(13),
        count: u32::from_le_bytes(bytes[21..25].try_into().unwrap()),
    })
}

/// Checks and decodes a whole frame.
pub(crate) fn decode(seq: u64, bytes: &[u8]) -> Result<Frame, FrameError> {
    let mut records = Vec::new();
    let header = decode_into(bytes, |_| true, &mut records)?;
    Ok(Frame {
        seq,
        header,
        records,
    })
}

/// Checks a whole frame and appends the records `keep` accepts to `out`, in
/// frame order, without an intermediate frame. All or nothing: on an error
/// `out` is left as it was.
pub(crate) fn decode_into(
    bytes: &[u8],
    keep: impl Fn(&Record) -> bool,
    out: &mut Vec<Record>,
) -> Result<FrameHeader, FrameError> {
    let header = check(bytes)?;
    let before = out.len();
    out.reserve(header.count as usize);
    let mut rest = &bytes[HEADER_LEN..];
    let mut failed = None;
    for index in 0..header.count {
        match decode_record(rest) {
            Ok((record, used)) => {
                if keep(&record) {
                    out.push(record);
                }
                rest = &rest[used..];
            }
            Err(e) => {
                failed = Some(FrameError::Record {
                    index,
                    count: header.count,
                    detail: e.to_string(),
                });
                break;
            }
        }
    }
    if failed.is_none() && !rest.is_empty() {
        failed = Some(FrameError::Trailing(rest.len()));
    }
    match failed {
        Some(e) => {
            out.truncate(before);
            Err(e)
        }
        None => Ok(header),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::encode_record;

    fn sample() -> (Vec<Record>, Vec<u8>) {
        let records = crate::record::codec_samples();
        let mut b = FrameBuilder::new();
        for r in &records {
            let mut enc = Vec::new();
            encode_record(r, &mut enc).unwrap();
            b.push_encoded(&enc, 1);
        }
        (records, b.seal(42, 1_700_000_000_000))
    }

    #[test]
    fn round_trips_every_variant() {
        let (records, bytes) = sample();
        let f = decode(7, &bytes).unwrap();
        assert_eq!(f.seq, 7);
        assert_eq!(
            f.header,
            FrameHeader {
                first_record: 42,
                created_ms: 1_700_000_000_000,
                count: records.len() as u32
            }
        );
        assert_eq!(f.records, records);
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let (_, bytes) = sample();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x5A;
            assert!(decode(1, &bad).is_err(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn truncation_is_detected() {
        let (_, bytes) = sample();
        for cut in 0..bytes.len() {
            assert!(decode(1, &bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn zeroed_header_is_a_version_error() {
        let (_, mut bytes) = sample();
        bytes[..HEADER_LEN].fill(0);
        assert_eq!(decode(1, &bytes).unwrap_err(), FrameError::Version(0));
    }

    #[test]
    fn decode_into_keeps_what_is_asked_and_is_all_or_nothing() {
        let (records, bytes) = sample();
        let marker = records[0].clone();
        // Only bars, appended after what the vector held already.
        let mut out = vec![marker.clone()];
        let header = decode_into(
            &bytes,
            |r| r.kind() == crate::record::RecordKind::Bar,
            &mut out,
        )
        .unwrap();
        assert_eq!(header.count as usize, records.len());
        let bars: Vec<Record> = records
            .iter()
            .filter(|r| r.kind() == crate::record::RecordKind::Bar)
            .cloned()
            .collect();
        assert!(!bars.is_empty());
        assert_eq!(out[1..], bars[..]);
        // A frame whose CRC holds but whose last record does not decode adds
        // nothing, though the records before it decoded.
        let mut b = FrameBuilder::new();
        for r in &records {
            let mut enc = Vec::new();
            encode_record(r, &mut enc).unwrap();
            b.push_encoded(&enc, 1);
        }
        b.push_encoded(&[0xEE, 1, 2, 3], 1);
        let bad = b.seal(1, 1);
        let mut out = vec![marker.clone()];
        let e = decode_into(&bad, |_| true, &mut out).unwrap_err();
        assert!(
            matches!(e, FrameError::Record { index, .. } if index as usize == records.len()),
            "{e:?}"
        );
        assert_eq!(out, vec![marker]);
    }

    #[test]
    fn valid_crc_with_bad_count_is_a_record_error() {
        // A frame whose count claims one record more than its payload holds,
        // with a CRC recomputed so only decoding can notice.
        let (records, mut bytes) = sample();
        bytes[21..25].copy_from_slice(&(records.len() as u32 + 1).to_le_bytes());
        let crc = crc32fast::hash(&bytes[5..]);
        bytes[1..5].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(decode(1, &bytes), Err(FrameError::Record { .. })));
    }

    #[test]
    fn keys_sort_in_log_order() {
        assert!(seq_key(255) < seq_key(256));
        assert_eq!(key_seq(&seq_key(u64::MAX - 1)), Some(u64::MAX - 1));
        assert_eq!(key_seq(b"\x00"), None);
    }
}
