//! Topic globs from the command line (`--allow-topic 'rooms:*'`): `*` is any
//! run of characters, `?` one character, the rest literal. Compiled once at
//! start, so a join costs no allocation.

use wildmatch::WildMatch;

#[derive(Clone, Debug, Default)]
pub struct Globs(Box<[WildMatch]>);

impl Globs {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Globs {
        Globs(
            patterns
                .iter()
                .map(|p| WildMatch::new(p.as_ref()))
                .collect(),
        )
    }

    /// Whether any of the globs matches all of `text`.
    pub fn matches(&self, text: &str) -> bool {
        self.0.iter().any(|g| g.matches(text))
    }
}

#[cfg(test)]
mod tests {
    use super::Globs;

    #[test]
    fn stars_and_question_marks() {
        let g = Globs::new(&["rooms:*", "a?c", "*:x:*"]);
        assert!(g.matches("rooms:lobby"));
        assert!(g.matches("rooms:"));
        assert!(!g.matches("room:x"));
        assert!(g.matches("abc"));
        assert!(g.matches("a:x:b"));
        let exact = Globs::new(&["exact"]);
        assert!(!exact.matches("exactly"));
        assert!(!Globs::default().matches("anything"));
    }
}
