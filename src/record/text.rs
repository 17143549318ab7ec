//! [`Text`]: the string type of record fields (venue, symbol, side, ids).
//!
//! Invariant: a `Text` encodes to exactly the bytes a `String` does, in the
//! log (bincode: varint length, then UTF-8) and in JSON, so frames written
//! before this type existed decode unchanged and the JSON shape is the same.
//!
//! Why not `String`: record fields are short (`BINANCE`, `BTCUSDT`, `buy`, a
//! numeric trade id), and every `String` costs an allocation when a record is
//! parsed or decoded and a free when it is dropped — four of each per trade,
//! about a quarter of the drainer's CPU (docs/PERFORMANCE.md). A `Text` keeps
//! up to 24 bytes inline (`compact_str`) and only longer values on the heap.

use std::fmt;
use std::ops::Deref;

use bincode::de::read::Reader;
use bincode::de::Decoder;
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// A UTF-8 string that keeps short values inline. Reads as a `&str`.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Text(CompactString);

impl Text {
    /// An empty text (no allocation).
    pub const fn new() -> Text {
        Text(CompactString::const_new(""))
    }

    /// The text as a string slice.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.0.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.0.as_str()
    }
}

impl std::borrow::Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text(CompactString::from(s))
    }
}

impl From<&String> for Text {
    fn from(s: &String) -> Text {
        Text(CompactString::from(s.as_str()))
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(CompactString::from(s))
    }
}

impl From<Text> for String {
    fn from(t: Text) -> String {
        t.0.into_string()
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.0.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.0.as_str() == *other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        self.0.as_str() == other.as_str()
    }
}

impl PartialEq<Text> for &str {
    fn eq(&self, other: &Text) -> bool {
        *self == other.0.as_str()
    }
}

impl PartialEq<Text> for str {
    fn eq(&self, other: &Text) -> bool {
        self == other.0.as_str()
    }
}

impl bincode::Encode for Text {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        // `str` encodes as `String` does: the wire format is unchanged.
        self.0.as_str().encode(encoder)
    }
}

/// Longest value decoded through the stack buffer when the reader cannot
/// lend its bytes; longer ones go through a `Vec`.
const STACK: usize = 64;

impl<Context> bincode::Decode<Context> for Text {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let len = u64::decode(decoder)?;
        let len = usize::try_from(len).map_err(|_| DecodeError::OutsideUsizeRange(len))?;
        // Counts against the decoder's byte limit, as `String` does.
        decoder.claim_bytes_read(len)?;
        let utf8 = |bytes: &[u8]| {
            std::str::from_utf8(bytes)
                .map(|s| Text(CompactString::from(s)))
                .map_err(|inner| DecodeError::Utf8 { inner })
        };
        // A slice reader (how frames are decoded) lends its bytes: no copy
        // beyond the one into the `Text`.
        if let Some(bytes) = decoder.reader().peek_read(len) {
            let text = utf8(bytes)?;
            decoder.reader().consume(len);
            return Ok(text);
        }
        if len <= STACK {
            let mut buf = [0u8; STACK];
            decoder.reader().read(&mut buf[..len])?;
            utf8(&buf[..len])
        } else {
            let mut buf = vec![0u8; len];
            decoder.reader().read(&mut buf)?;
            String::from_utf8(buf)
                .map(Text::from)
                .map_err(|e| DecodeError::Utf8 {
                    inner: e.utf8_error(),
                })
        }
    }
}
bincode::impl_borrow_decode!(Text);

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> bincode::config::Configuration {
        bincode::config::standard()
    }

    #[test]
    fn encodes_exactly_as_a_string() {
        for s in [
            "",
            "BINANCE",
            "a longer value that does not fit inline, 40+ bytes",
            "ünï",
        ] {
            let a = bincode::encode_to_vec(s.to_string(), cfg()).unwrap();
            let b = bincode::encode_to_vec(Text::from(s), cfg()).unwrap();
            assert_eq!(a, b, "{s:?}");
            let (back, n): (Text, usize) = bincode::decode_from_slice(&a, cfg()).unwrap();
            assert_eq!((back.as_str(), n), (s, a.len()));
            assert_eq!(
                serde_json::to_string(&Text::from(s)).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }

    #[test]
    fn decodes_through_a_reader_that_lends_nothing() {
        // `decode_from_std_read` has no `peek_read`: the stack and heap paths.
        for s in [
            "BTCUSDT",
            &"x".repeat(STACK),
            &"y".repeat(STACK + 1),
            &"z".repeat(1000),
        ] {
            let bytes = bincode::encode_to_vec(s.to_string(), cfg()).unwrap();
            let back: Text = bincode::decode_from_std_read(&mut &bytes[..], cfg()).unwrap();
            assert_eq!(back.as_str(), s);
        }
    }

    #[test]
    fn refuses_bad_utf8_and_short_input() {
        let mut bytes = bincode::encode_to_vec("ab".to_string(), cfg()).unwrap();
        *bytes.last_mut().unwrap() = 0xFF;
        assert!(matches!(
            bincode::decode_from_slice::<Text, _>(&bytes, cfg()),
            Err(DecodeError::Utf8 { .. })
        ));
        let bytes = bincode::encode_to_vec("abcdef".to_string(), cfg()).unwrap();
        assert!(bincode::decode_from_slice::<Text, _>(&bytes[..4], cfg()).is_err());
        let mut long = bincode::encode_to_vec("y".repeat(STACK + 10), cfg()).unwrap();
        long.truncate(20);
        assert!(bincode::decode_from_std_read::<Text, _, _>(&mut &long[..], cfg()).is_err());
    }

    #[test]
    fn short_values_stay_inline() {
        assert!(!Text::from("BINANCE").0.is_heap_allocated());
        assert!(!Text::from("x".repeat(24)).0.is_heap_allocated());
        assert!(Text::from("x".repeat(25)).0.is_heap_allocated());
        assert_eq!(std::mem::size_of::<Text>(), std::mem::size_of::<String>());
    }
}
