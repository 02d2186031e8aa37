//! Object IDs: 64 lowercase hex characters (256 random bits), the form the
//! CRI and every other runtime use, so people can type unique prefixes.

/// Length of a full ID.
pub const ID_LEN: usize = 64;

/// A fresh random ID from the kernel's CSPRNG.
pub fn generate_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; ID_LEN / 2];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `s` has the shape of a full ID.
#[cfg(test)]
pub fn is_full_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_and_distinct() {
        let a = generate_id().unwrap();
        let b = generate_id().unwrap();
        assert!(is_full_id(&a), "{a}");
        assert!(is_full_id(&b), "{b}");
        assert_ne!(a, b);
    }

    #[test]
    fn shape_check() {
        assert!(!is_full_id("abc"));
        assert!(!is_full_id(&"A".repeat(64)));
        assert!(!is_full_id(&"g".repeat(64)));
        assert!(is_full_id(&"0f".repeat(32)));
    }
}
