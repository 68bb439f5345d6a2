//! Label values from outside vmbridge, made safe.

/// Makes a string from outside vmbridge (a guest, a process name) safe to use as a label
/// value: control characters become `?`, and it is cut at `max` bytes on a character boundary.
pub fn label(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let c = if c.is_control() { '?' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}
