//! Names people choose (token, user, group and member names): what makes one unusable.

/// What makes `name` unusable as a token, user, group or member name, if anything: empty, longer than 200 bytes, or
/// holding a character that would make listings and logs show something other than what is stored.
pub fn name_problem(name: &str) -> Option<String> {
    if name.trim().is_empty() {
        return Some("is empty".into());
    }
    if name.len() > 200 {
        return Some("is longer than 200 bytes".into());
    }
    name.chars().find(|c| lying_char(*c)).map(|c| {
        format!(
            "holds U+{:04X}, a control, format or separator character (Unicode Cc, Cf, Zl, Zp) that would make \
             listings and logs show something else",
            u32::from(c)
        )
    })
}

/// Whether `c` is in Unicode's categories Cc (controls), Cf (format: bidirectional overrides, zero-width
/// characters, soft hyphen, tags…), Zl or Zp (line and paragraph separators).
pub fn lying_char(c: char) -> bool {
    if c.is_control() {
        return true;
    }
    matches!(
        u32::from(c),
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x2028..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_lie_are_refused() {
        for bad in [
            "a\u{202E}b",
            "a\u{2028}b",
            "a\u{2029}b",
            "a\u{200B}b",
            "a\u{2066}b",
            "a\u{FEFF}",
            "a\u{85}",
            "a\nb",
            "\u{E0041}",
            " ",
        ] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
        assert!(name_problem("laptop\u{202E}").unwrap().contains("U+202E"));
        for good in ["laptop", "ci-runner 2", "café", "日本", "bob.smith"] {
            assert_eq!(name_problem(good), None, "{good:?}");
        }
    }
}
