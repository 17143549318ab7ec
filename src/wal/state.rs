//! The log's running totals. They are stored in the frames tree itself, under
//! a one-byte key that sorts before every 8-byte frame key, and every change to
//! them is applied in the same atomic sled batch as the frame inserts or
//! deletes that caused it, so the totals never drift from the frames, even
//! across a crash, and opening the log needs no scan.

use super::WalError;

/// Key of the totals record inside the frames tree (frame keys are 8 bytes).
pub(crate) const STATE_KEY: &[u8] = &[0];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogState {
    /// Sequence number the next frame gets (frames start at 1).
    pub next_seq: u64,
    /// Log-wide index the next record gets.
    pub next_record: u64,
    /// Bytes held by frames (value + key).
    pub bytes: u64,
    /// Records held by frames.
    pub records: u64,
    /// Frames held.
    pub frames: u64,
    /// Records deleted by `drop_oldest` since the log was created.
    pub dropped_records: u64,
}

impl Default for LogState {
    fn default() -> Self {
        LogState {
            next_seq: 1,
            next_record: 0,
            bytes: 0,
            records: 0,
            frames: 0,
            dropped_records: 0,
        }
    }
}

impl LogState {
    pub(crate) fn encode(&self) -> [u8; 48] {
        let mut out = [0u8; 48];
        for (i, v) in [
            self.next_seq,
            self.next_record,
            self.bytes,
            self.records,
            self.frames,
            self.dropped_records,
        ]
        .into_iter()
        .enumerate()
        {
            out[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, WalError> {
        if b.len() != 48 {
            return Err(WalError::Corrupt {
                what: "log totals",
                detail: format!("{} bytes, expected 48", b.len()),
            });
        }
        let at = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        Ok(LogState {
            next_seq: at(0),
            next_record: at(1),
            bytes: at(2),
            records: at(3),
            frames: at(4),
            dropped_records: at(5),
        })
    }

    /// Accounts for a frame leaving the log.
    pub(crate) fn remove_frame(&mut self, bytes: u64, records: u64) {
        self.bytes = self.bytes.saturating_sub(bytes);
        self.records = self.records.saturating_sub(records);
        self.frames = self.frames.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let s = LogState {
            next_seq: 9,
            next_record: 8,
            bytes: 7,
            records: 6,
            frames: 5,
            dropped_records: 4,
        };
        assert_eq!(LogState::decode(&s.encode()).unwrap(), s);
        assert!(LogState::decode(&[1, 2, 3]).is_err());
    }
}
