//! Warnings for the person running `kubectl`, within what the API server
//! will show.
//!
//! kube-apiserver keeps warnings as `Warning` headers: it drops a text with
//! control characters, deduplicates, and once a request's warnings pass
//! 4096 characters in total it cuts every one to 256 (k8s.io/apiserver
//! `filters/warning.go`). So each warning here is at most 256 characters of
//! printable text, and a review's warnings stay within 4096 in total, the
//! most important first; what does not fit is counted in a last "N more".
//! Storage is bounded too: a hostile object that would produce millions of
//! warnings costs a few dozen strings, not a response the size of its input.

/// How much a warning matters to the object's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Traffic is or would be dropped, lost or rejected; zonewise replaced a
    /// configured value the API server would not take.
    High,
    /// What zonewise did, or did not do, to this object and why.
    Normal,
    /// Background: a fallback was used, something could not be checked.
    Low,
}

/// Longest single warning, in characters (the API server's cut).
pub const MAX_CHARS: usize = 256;
/// All of a review's warnings together, in characters.
pub const MAX_TOTAL_CHARS: usize = 4096;
/// Most warnings returned; more than this is noise to a person.
pub const MAX_COUNT: usize = 16;
/// Most warnings held while a review runs.
const MAX_HELD: usize = 48;

#[derive(Debug, Default)]
pub struct Warnings {
    held: Vec<(Priority, String)>,
    /// Distinct warnings dropped because `held` was full.
    overflow: usize,
}

impl Warnings {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, priority: Priority, text: impl Into<String>) {
        let text = clean(text.into());
        if text.is_empty() || self.held.iter().any(|(_, t)| *t == text) {
            return;
        }
        if self.held.len() < MAX_HELD {
            self.held.push((priority, text));
            return;
        }
        // Full: a more important warning takes the place of the least
        // important one held.
        self.overflow += 1;
        if let Some(i) = (0..self.held.len())
            .rev()
            .max_by_key(|&i| self.held[i].0)
            .filter(|&i| self.held[i].0 > priority)
        {
            self.held[i] = (priority, text);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// The texts held so far, in the order they came.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.held.iter().map(|(_, t)| t.as_str())
    }

    /// The warnings to return: most important first (in the order they came
    /// within a priority), within [`MAX_COUNT`] and [`MAX_TOTAL_CHARS`].
    pub fn finish(mut self) -> Vec<String> {
        self.held.sort_by_key(|(p, _)| *p);
        let total = self.held.len() + self.overflow;
        let mut out = Vec::new();
        let mut used = 0;
        // Room for the "N more" line, which is short.
        let budget = MAX_TOTAL_CHARS - 64;
        for (_, text) in self.held {
            let n = text.chars().count();
            if out.len() + 1 >= MAX_COUNT || used + n > budget {
                break;
            }
            used += n;
            out.push(text);
        }
        let more = total - out.len();
        if more > 0 {
            out.push(format!(
                "zonewise: {more} more warning{} not shown",
                if more == 1 { "" } else { "s" }
            ));
        }
        out
    }
}

/// Printable, single-line, at most [`MAX_CHARS`] characters: control
/// characters (a newline in a name, ANSI escapes) become `?`, and a long
/// text ends in `…`.
fn clean(text: String) -> String {
    // Nearly every warning is short printable ASCII, built by `format!`:
    // kept as it is, without a second copy (this ran for every warning of
    // every review).
    if text.len() <= MAX_CHARS && text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return text;
    }
    let mut out = String::with_capacity(text.len().min(MAX_CHARS * 4));
    for (i, c) in text.chars().enumerate() {
        if i == MAX_CHARS - 1 && text.chars().nth(MAX_CHARS).is_some() {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { '?' } else { c });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deduplicated_and_most_important_first() {
        let mut w = Warnings::new();
        w.push(Priority::Low, "zonewise: fallback");
        w.push(Priority::High, "zonewise: traffic dropped");
        w.push(Priority::Normal, "zonewise: kept instance");
        w.push(Priority::Low, "zonewise: fallback");
        assert_eq!(
            w.finish(),
            [
                "zonewise: traffic dropped",
                "zonewise: kept instance",
                "zonewise: fallback"
            ]
        );
    }

    #[test]
    fn control_characters_and_length_are_bounded() {
        let mut w = Warnings::new();
        w.push(Priority::Normal, "a\nb\u{1b}[31mc\u{7f}");
        w.push(Priority::Normal, "x".repeat(10_000));
        let out = w.finish();
        assert_eq!(out[0], "a?b?[31mc?");
        assert_eq!(out[1].chars().count(), MAX_CHARS);
        assert!(out[1].ends_with('…'));
        let mut w = Warnings::new();
        w.push(Priority::Normal, "y".repeat(MAX_CHARS));
        assert_eq!(
            w.finish()[0],
            "y".repeat(MAX_CHARS),
            "exactly the limit is kept whole"
        );
    }

    #[test]
    fn many_warnings_fit_the_api_servers_limits_and_say_how_many_more() {
        let mut w = Warnings::new();
        for i in 0..100_000 {
            w.push(
                Priority::Low,
                format!("zonewise: unknown item {i} {}", "z".repeat(150)),
            );
        }
        w.push(Priority::High, "zonewise: the one that matters");
        assert!(w.len() <= MAX_HELD);
        let out = w.finish();
        assert_eq!(out[0], "zonewise: the one that matters");
        assert!(out.len() <= MAX_COUNT);
        let total: usize = out.iter().map(|t| t.chars().count()).sum();
        assert!(total <= MAX_TOTAL_CHARS, "{total}");
        let last = out.last().unwrap();
        let shown = out.len() - 1;
        assert_eq!(
            *last,
            format!("zonewise: {} more warnings not shown", 100_001 - shown)
        );
    }

    #[test]
    fn nothing_to_say_is_nothing() {
        assert!(Warnings::new().finish().is_empty());
    }
}
