//! Constraints: which services the provider looks at, as in Traefik's
//! `providers.swarm.constraints`, e.g.
//! ``Label(`traefik.constraint-label`, `public`) && !Label(`tier`, `db`)``.
//!
//! Matchers: ``Label(`key`, `value`)`` (exact) and
//! ``LabelRegex(`key`, `regex`)`` (the regex may match part of the value,
//! as in Traefik), combined with `&&`, `||`, `!` and parentheses.

use std::collections::BTreeMap;

use regex::Regex;

/// Longest expression accepted.
const MAX_LEN: usize = 4096;
/// Deepest nesting accepted.
const MAX_DEPTH: usize = 32;

/// A parsed constraint expression.
#[derive(Debug, Clone)]
pub enum Constraint {
    /// Both hold.
    And(Box<Constraint>, Box<Constraint>),
    /// Either holds.
    Or(Box<Constraint>, Box<Constraint>),
    /// The inner one does not hold.
    Not(Box<Constraint>),
    /// Label `key` equals the value.
    Label(String, String),
    /// Label `key` matches the regex.
    LabelRegex(String, Regex),
}

impl Constraint {
    /// Parses an expression; the error says where and what to write.
    pub fn parse(input: &str) -> Result<Constraint, String> {
        if input.len() > MAX_LEN {
            return Err(format!("constraint longer than {MAX_LEN} bytes"));
        }
        let mut p = Parser {
            s: input.as_bytes(),
            src: input,
            i: 0,
        };
        let c = p.or(0)?;
        p.ws();
        if p.i != p.s.len() {
            return Err(p.fail("unexpected text: expected && or || between matchers"));
        }
        Ok(c)
    }

    /// Whether a service with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Constraint::And(a, b) => a.matches(labels) && b.matches(labels),
            Constraint::Or(a, b) => a.matches(labels) || b.matches(labels),
            Constraint::Not(a) => !a.matches(labels),
            Constraint::Label(k, v) => labels.get(k) == Some(v),
            Constraint::LabelRegex(k, re) => labels.get(k).is_some_and(|v| re.is_match(v)),
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    src: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn fail(&self, what: &str) -> String {
        format!(
            "constraint at column {}: {what} (write e.g. Label(`key`, `value`) && !LabelRegex(`key`, `re.*`))",
            self.i + 1
        )
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, tok: &str) -> bool {
        self.ws();
        if self.src[self.i..].starts_with(tok) {
            self.i += tok.len();
            true
        } else {
            false
        }
    }

    fn or(&mut self, depth: usize) -> Result<Constraint, String> {
        let mut left = self.and(depth)?;
        while self.eat("||") {
            let right = self.and(depth)?;
            left = Constraint::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Constraint, String> {
        let mut left = self.unary(depth)?;
        while self.eat("&&") {
            let right = self.unary(depth)?;
            left = Constraint::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<Constraint, String> {
        if depth > MAX_DEPTH {
            return Err(self.fail("nested too deeply"));
        }
        if self.eat("!") {
            return Ok(Constraint::Not(Box::new(self.unary(depth + 1)?)));
        }
        if self.eat("(") {
            let c = self.or(depth + 1)?;
            if !self.eat(")") {
                return Err(self.fail("missing )"));
            }
            return Ok(c);
        }
        self.ws();
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i].is_ascii_alphabetic() {
            self.i += 1;
        }
        let name = &self.src[start..self.i];
        if !self.eat("(") {
            return Err(self.fail("expected Label(…) or LabelRegex(…)"));
        }
        let key = self.quoted()?;
        if !self.eat(",") {
            return Err(self.fail("expected , between the label name and the value"));
        }
        let value = self.quoted()?;
        if !self.eat(")") {
            return Err(self.fail("missing )"));
        }
        match name {
            "Label" => Ok(Constraint::Label(key, value)),
            "LabelRegex" => Regex::new(&value)
                .map(|re| Constraint::LabelRegex(key, re))
                .map_err(|e| self.fail(&format!("bad regex {value:?}: {e}"))),
            other => {
                self.i = start;
                Err(self.fail(&format!(
                    "unknown matcher {other:?}: use Label or LabelRegex"
                )))
            }
        }
    }

    fn quoted(&mut self) -> Result<String, String> {
        self.ws();
        let Some(&q) = self.s.get(self.i) else {
            return Err(self.fail("expected a quoted string"));
        };
        if q != b'`' && q != b'"' {
            return Err(self.fail("expected a string quoted with backticks"));
        }
        let start = self.i + 1;
        let Some(len) = self.src[start..].find(q as char) else {
            return Err(self.fail("unterminated string"));
        };
        self.i = start + len + 1;
        Ok(self.src[start..start + len].to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn l(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn matchers_and_operators() {
        let c = Constraint::parse(
            "Label(`traefik.constraint-label`, `public`) && !LabelRegex(`tier`, `^d.*`)",
        )
        .unwrap();
        assert!(c.matches(&l(&[("traefik.constraint-label", "public")])));
        assert!(c.matches(&l(&[
            ("traefik.constraint-label", "public"),
            ("tier", "web")
        ])));
        assert!(!c.matches(&l(&[
            ("traefik.constraint-label", "public"),
            ("tier", "db")
        ])));
        assert!(!c.matches(&l(&[])));
        let c = Constraint::parse("(Label(`a`,`1`) || Label(\"b\", \"2\")) && !(Label(`c`,`3`))")
            .unwrap();
        assert!(c.matches(&l(&[("b", "2")])));
        assert!(!c.matches(&l(&[("b", "2"), ("c", "3")])));
    }

    #[test]
    fn errors_say_where_and_how() {
        for bad in [
            "Label(`a`)",
            "Labels(`a`,`b`)",
            "Label(`a`,`b`) &&",
            "Label('a','b')",
            "LabelRegex(`a`,`(`)",
            "Label(`a`,`b`) x",
        ] {
            let e = Constraint::parse(bad).unwrap_err();
            assert!(e.contains("column"), "{bad}: {e}");
        }
    }

    proptest! {
        #[test]
        fn parsing_is_total(s in "[LabelRgx!&|() `,a-c]{0,60}") {
            let _ = Constraint::parse(&s);
        }
    }
}
