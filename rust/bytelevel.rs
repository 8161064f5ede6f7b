//! The GPT-2 byte-to-unicode alphabet used by byte-level BPE vocabularies: every byte maps to
//! one printable char, so token strings in `vocab.json` spell raw bytes.

use std::sync::OnceLock;

struct Tables {
    byte_to_char: [char; 256],
    /// Indexed by code point (all mapped chars are below U+0144).
    char_to_byte: [i16; 324],
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        let mut byte_to_char = ['\0'; 256];
        let mut char_to_byte = [-1i16; 324];
        let printable = |b: u32| {
            (u32::from(b'!')..=u32::from(b'~')).contains(&b)
                || (0xA1..=0xAC).contains(&b)
                || (0xAE..=0xFF).contains(&b)
        };
        let mut n = 0u32;
        for b in 0u32..256 {
            let c = if printable(b) {
                b
            } else {
                n += 1;
                255 + n
            };
            let ch = char::from_u32(c).expect("valid code point");
            byte_to_char[b as usize] = ch;
            char_to_byte[c as usize] = b as i16;
        }
        Tables {
            byte_to_char,
            char_to_byte,
        }
    })
}

/// The char that spells byte `b`.
pub fn byte_to_char(b: u8) -> char {
    tables().byte_to_char[b as usize]
}

/// The byte spelled by `c`, if `c` belongs to the byte-level alphabet.
pub fn char_to_byte(c: char) -> Option<u8> {
    let t = tables();
    let i = c as usize;
    if i < t.char_to_byte.len() && t.char_to_byte[i] >= 0 {
        Some(t.char_to_byte[i] as u8)
    } else {
        None
    }
}

/// Raw bytes -> byte-level token string.
pub fn encode_str(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| byte_to_char(b)).collect()
}

/// Byte-level token string -> raw bytes; `None` if a char is outside the alphabet.
pub fn decode_str(s: &str) -> Option<Vec<u8>> {
    s.chars().map(char_to_byte).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_round_trips_every_byte() {
        for b in 0u8..=255 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'a'), 'a');
        assert_eq!(char_to_byte('€'), None);
        assert_eq!(decode_str("ĠhelloĊ").unwrap(), b" hello\n");
    }
}
