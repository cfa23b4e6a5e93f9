//! Bounding text that others chose (a device, a client, a database error)
//! before it goes into a log line or a message with a length limit.

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` clipped to `max` bytes, with `…` appended when something was cut
/// (for log lines).
pub fn clip_for_log(s: &str, max: usize) -> String {
    let clipped = clip(s, max);
    match clipped.len() < s.len() {
        true => format!("{clipped}…"),
        false => clipped.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_never_splits_a_character() {
        assert_eq!(clip("température", 5), "temp", "é is two bytes: not split");
        assert_eq!(clip("température", 6), "tempé");
        assert_eq!(clip("short", 100), "short");
        assert_eq!(clip("😀😀", 5), "😀");
        assert_eq!(clip("😀", 3), "");
        assert_eq!(clip_for_log("abcdef", 3), "abc…");
        assert_eq!(clip_for_log("abc", 3), "abc");
    }
}
