//! The router rule language, as in Traefik v3 (with the v2 multi-argument
//! forms accepted): `Host`, `HostRegexp`, `Path`, `PathPrefix`,
//! `PathRegexp`, `Method`, `Header`, `HeaderRegexp`, `Query`, `QueryRegexp`,
//! `ClientIP`, combined with `&&`, `||`, `!` and parentheses. Arguments are
//! quoted with backticks or double quotes.
//!
//! Parsing is pure and total: any input gives a [`Rule`] or a [`RuleError`]
//! that points at the offending column and says how to fix it.

use std::fmt;
use std::net::IpAddr;

use http::{HeaderMap, Method};
use ipnet::IpNet;
use regex::Regex;

/// Longest rule accepted, in bytes (a bound against pathological input).
pub const MAX_RULE_LEN: usize = 16 * 1024;
/// Deepest nesting of parentheses / `!` accepted.
const MAX_DEPTH: usize = 64;
/// Largest compiled regex, in bytes, so a rule cannot exhaust memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A parse error, with the byte offset where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at column {}: {message}", .column + 1)]
pub struct RuleError {
    /// Byte offset into the rule.
    pub column: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// A compiled rule: a boolean expression over matchers.
#[derive(Debug, Clone)]
pub enum Rule {
    /// Both sides match.
    And(Box<Rule>, Box<Rule>),
    /// Either side matches.
    Or(Box<Rule>, Box<Rule>),
    /// The inner rule does not match.
    Not(Box<Rule>),
    /// A single matcher.
    Matcher(Matcher),
}

/// One matcher function of the rule language.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// Host equals one of these (lower case, compared without the port).
    Host(Vec<String>),
    /// Host matches the regex.
    HostRegexp(Regex),
    /// Path equals one of these.
    Path(Vec<String>),
    /// Path starts with one of these.
    PathPrefix(Vec<String>),
    /// Path matches the regex.
    PathRegexp(Regex),
    /// Method is one of these.
    Method(Vec<Method>),
    /// Header `name` has value `value` (exact).
    Header(http::HeaderName, String),
    /// Header `name` has a value matching the regex.
    HeaderRegexp(http::HeaderName, Regex),
    /// Query parameter `name` is present (with value `value` when given).
    Query(String, Option<String>),
    /// Query parameter `name` has a value matching the regex.
    QueryRegexp(String, Regex),
    /// Client address is in one of these networks.
    ClientIp(Vec<IpNet>),
}

/// What a rule looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Request method.
    pub method: &'a Method,
    /// Host, lower case, without port.
    pub host: &'a str,
    /// Path, as received (not decoded).
    pub path: &'a str,
    /// Raw query string, if any.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Address of the TCP peer.
    pub client_ip: IpAddr,
}

/// Lower-cases `host` and strips a trailing `:port` (IPv6 brackets kept).
pub fn normalize_host(host: &str) -> String {
    let h = if let Some(end) = host.strip_prefix('[').and_then(|_| host.find(']')) {
        &host[..=end]
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

impl Rule {
    /// Parses and compiles `input`.
    pub fn parse(input: &str) -> Result<Rule, RuleError> {
        if input.len() > MAX_RULE_LEN {
            return Err(RuleError {
                column: MAX_RULE_LEN,
                message: format!(
                    "rule is {} bytes long, the limit is {MAX_RULE_LEN}: split it into several routers",
                    input.len()
                ),
            });
        }
        let tokens = lex(input)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            end: input.len(),
            depth: 0,
        };
        if p.tokens.is_empty() {
            return Err(RuleError {
                column: 0,
                message: "empty rule: write at least one matcher, e.g. Host(`app.b3.swarm`)".into(),
            });
        }
        let rule = p.or()?;
        if let Some(t) = p.tokens.get(p.pos) {
            return Err(RuleError {
                column: t.at,
                message: format!(
                    "unexpected {} after a complete expression: join matchers with && or ||",
                    t.kind
                ),
            });
        }
        Ok(rule)
    }

    /// Whether the request matches.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        match self {
            Rule::And(a, b) => a.matches(req) && b.matches(req),
            Rule::Or(a, b) => a.matches(req) || b.matches(req),
            Rule::Not(a) => !a.matches(req),
            Rule::Matcher(m) => m.matches(req),
        }
    }

    /// The hosts a request must have for this rule to match, when the rule
    /// pins them (so the routing table can index it by host); `None` when
    /// any host might match.
    pub fn required_hosts(&self) -> Option<Vec<String>> {
        match self {
            Rule::Matcher(Matcher::Host(hosts)) => Some(hosts.clone()),
            Rule::Matcher(_) | Rule::Not(_) => None,
            Rule::And(a, b) => match (a.required_hosts(), b.required_hosts()) {
                (Some(x), Some(y)) => {
                    // Both must hold: the intersection (may be empty: never matches).
                    Some(x.into_iter().filter(|h| y.contains(h)).collect())
                }
                (Some(x), None) | (None, Some(x)) => Some(x),
                (None, None) => None,
            },
            Rule::Or(a, b) => match (a.required_hosts(), b.required_hosts()) {
                (Some(mut x), Some(y)) => {
                    for h in y {
                        if !x.contains(&h) {
                            x.push(h);
                        }
                    }
                    Some(x)
                }
                _ => None,
            },
        }
    }
}

impl Matcher {
    fn matches(&self, r: &RequestView<'_>) -> bool {
        match self {
            Matcher::Host(hosts) => hosts.iter().any(|h| h == r.host),
            Matcher::HostRegexp(re) => re.is_match(r.host),
            Matcher::Path(paths) => paths.iter().any(|p| p == r.path),
            Matcher::PathPrefix(prefixes) => {
                prefixes.iter().any(|p| r.path.starts_with(p.as_str()))
            }
            Matcher::PathRegexp(re) => re.is_match(r.path),
            Matcher::Method(methods) => methods.iter().any(|m| m == r.method),
            Matcher::Header(name, value) => r
                .headers
                .get_all(name)
                .iter()
                .any(|v| v.as_bytes() == value.as_bytes()),
            Matcher::HeaderRegexp(name, re) => r
                .headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().map(|s| re.is_match(s)).unwrap_or(false)),
            Matcher::Query(name, value) => query_pairs(r.query)
                .any(|(k, v)| k == name.as_str() && value.as_ref().is_none_or(|want| *want == v)),
            Matcher::QueryRegexp(name, re) => {
                query_pairs(r.query).any(|(k, v)| k == name.as_str() && re.is_match(&v))
            }
            Matcher::ClientIp(nets) => {
                let ip = match r.client_ip {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(r.client_ip),
                    v4 => v4,
                };
                nets.iter().any(|n| n.contains(&ip))
            }
        }
    }
}

/// Decoded `key=value` pairs of a query string.
fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (String, String)> + '_ {
    query
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
}

/// Decodes `%XX` escapes and `+` (as a space); invalid escapes stay as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---- lexer ----

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Ident(String),
    Str(String),
    LParen,
    RParen,
    Comma,
    And,
    Or,
    Not,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Ident(s) => write!(f, "`{s}`"),
            Kind::Str(s) => write!(f, "string {s:?}"),
            Kind::LParen => f.write_str("'('"),
            Kind::RParen => f.write_str("')'"),
            Kind::Comma => f.write_str("','"),
            Kind::And => f.write_str("'&&'"),
            Kind::Or => f.write_str("'||'"),
            Kind::Not => f.write_str("'!'"),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    at: usize,
}

fn lex(input: &str) -> Result<Vec<Token>, RuleError> {
    let mut out = Vec::new();
    let mut it = input.char_indices().peekable();
    while let Some((at, c)) = it.next() {
        let kind = match c {
            c if c.is_whitespace() => continue,
            '(' => Kind::LParen,
            ')' => Kind::RParen,
            ',' => Kind::Comma,
            '!' => Kind::Not,
            '&' | '|' => {
                if it.next_if(|&(_, d)| d == c).is_none() {
                    return Err(RuleError {
                        column: at,
                        message: format!("lone '{c}': write '{c}{c}'"),
                    });
                }
                if c == '&' {
                    Kind::And
                } else {
                    Kind::Or
                }
            }
            '`' | '"' => {
                let mut s = String::new();
                let mut closed = false;
                while let Some((_, d)) = it.next() {
                    if d == c {
                        closed = true;
                        break;
                    }
                    if c == '"' && d == '\\' {
                        match it.next() {
                            Some((_, e)) => s.push(e),
                            None => break,
                        }
                        continue;
                    }
                    s.push(d);
                }
                if !closed {
                    return Err(RuleError {
                        column: at,
                        message: format!("string starting here is not closed: add the closing {c}"),
                    });
                }
                Kind::Str(s)
            }
            // Bare words: matcher names, and unquoted arguments (lexed
            // whole so the error can show the fix, e.g. Host(app.b3.swarm)).
            c if c.is_ascii_alphanumeric() || "/*._-".contains(c) => {
                let mut s = String::from(c);
                while let Some((_, d)) =
                    it.next_if(|&(_, d)| d.is_ascii_alphanumeric() || "/*._-:".contains(d))
                {
                    s.push(d);
                }
                Kind::Ident(s)
            }
            '\'' => return Err(RuleError {
                column: at,
                message:
                    "single quotes are not string quotes: use backticks, e.g. Host(`app.b3.swarm`)"
                        .into(),
            }),
            c => {
                return Err(RuleError {
                    column: at,
                    message: format!("unexpected character {c:?}"),
                })
            }
        };
        out.push(Token { kind, at });
    }
    Ok(out)
}

// ---- parser ----

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    end: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Kind> {
        self.tokens.get(self.pos).map(|t| &t.kind)
    }

    fn at(&self) -> usize {
        self.tokens.get(self.pos).map(|t| t.at).unwrap_or(self.end)
    }

    fn err<T>(&self, message: impl Into<String>) -> Result<T, RuleError> {
        Err(RuleError {
            column: self.at(),
            message: message.into(),
        })
    }

    fn or(&mut self) -> Result<Rule, RuleError> {
        let mut left = self.and()?;
        while self.peek() == Some(&Kind::Or) {
            self.pos += 1;
            let right = self.and()?;
            left = Rule::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Rule, RuleError> {
        let mut left = self.unary()?;
        while self.peek() == Some(&Kind::And) {
            self.pos += 1;
            let right = self.unary()?;
            left = Rule::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Rule, RuleError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err(format!(
                "nested deeper than {MAX_DEPTH} levels: simplify the rule"
            ));
        }
        let r = match self.peek().cloned() {
            Some(Kind::Not) => {
                self.pos += 1;
                Rule::Not(Box::new(self.unary()?))
            }
            Some(Kind::LParen) => {
                self.pos += 1;
                let inner = self.or()?;
                if self.peek() != Some(&Kind::RParen) {
                    return self.err("missing ')' to close the parenthesis");
                }
                self.pos += 1;
                inner
            }
            Some(Kind::Ident(name)) => {
                let at = self.at();
                self.pos += 1;
                let args = self.args(&name)?;
                Rule::Matcher(build_matcher(&name, args).map_err(|message| RuleError {
                    column: at,
                    message,
                })?)
            }
            Some(k) => return self.err(format!("expected a matcher such as Host(`…`), got {k}")),
            None => return self.err("rule ends too early: expected a matcher such as Host(`…`)"),
        };
        self.depth -= 1;
        Ok(r)
    }

    fn args(&mut self, name: &str) -> Result<Vec<String>, RuleError> {
        if self.peek() != Some(&Kind::LParen) {
            return self.err(format!("expected '(' after {name}"));
        }
        self.pos += 1;
        let mut args = Vec::new();
        loop {
            match self.peek().cloned() {
                Some(Kind::Str(s)) => {
                    self.pos += 1;
                    args.push(s);
                }
                Some(Kind::Ident(s)) => {
                    return self.err(format!(
                        "argument {s} of {name} is not quoted: write {name}(`{s}`)"
                    ))
                }
                Some(Kind::RParen) if args.is_empty() => {
                    return self.err(format!("{name}() needs an argument, e.g. {name}(`…`)"))
                }
                _ => return self.err(format!("expected a quoted argument to {name}")),
            }
            match self.peek() {
                Some(Kind::Comma) => self.pos += 1,
                Some(Kind::RParen) => {
                    self.pos += 1;
                    return Ok(args);
                }
                _ => return self.err(format!("expected ',' or ')' in the arguments of {name}")),
            }
        }
    }
}

fn compile_regex(what: &str, pattern: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("{what}: invalid regular expression {pattern:?}: {e}"))
}

/// Converts Traefik v2 `{name:re}` / `{name}` host/path templates to a regex;
/// plain v3 regexes pass through unchanged.
fn v2_template(pattern: &str, default: &str) -> String {
    // Only convert when it looks like a v2 template: `{word:` or `{word}`.
    let re = Regex::new(r"\{[A-Za-z_][A-Za-z0-9_]*(:|\})").ok();
    if !re.is_some_and(|re| re.is_match(pattern)) {
        return pattern.to_string();
    }
    let mut out = String::from("^");
    let mut rest = pattern;
    while let Some(start) = rest.find('{') {
        out.push_str(&regex::escape(&rest[..start]));
        let after = &rest[start + 1..];
        // Find the matching close brace (regexes may contain {n,m}).
        let mut depth = 1;
        let mut end = None;
        for (i, c) in after.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(end) = end else {
            out.push_str(&regex::escape(&rest[start..]));
            rest = "";
            break;
        };
        let inner = &after[..end];
        match inner.split_once(':') {
            Some((_, re)) => out.push_str(&format!("(?:{re})")),
            None => out.push_str(default),
        }
        rest = &after[end + 1..];
    }
    out.push_str(&regex::escape(rest));
    out.push('$');
    out
}

fn one_arg(name: &str, args: &[String], example: &str) -> Result<(), String> {
    if args.len() != 1 {
        return Err(format!(
            "{name} takes exactly one argument, got {}: write {example}",
            args.len()
        ));
    }
    Ok(())
}

fn build_matcher(name: &str, args: Vec<String>) -> Result<Matcher, String> {
    Ok(match name {
        "Host" => {
            let mut hosts = Vec::with_capacity(args.len());
            for a in args {
                if a.is_empty() || a.chars().any(|c| c.is_whitespace() || c == '/') {
                    return Err(format!(
                        "Host(`{a}`): not a host name; write a name such as Host(`app.b3.swarm`)"
                    ));
                }
                hosts.push(normalize_host(&a));
            }
            Matcher::Host(hosts)
        }
        "HostRegexp" => {
            one_arg(name, &args, "HostRegexp(`^.+\\.b3\\.swarm$`)")?;
            let pattern = v2_template(&args[0], "[^.]+");
            // Hosts are compared lower case, so the regex is case-insensitive.
            let re = regex::RegexBuilder::new(&pattern)
                .case_insensitive(true)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| format!("HostRegexp: invalid regular expression {pattern:?}: {e}"))?;
            Matcher::HostRegexp(re)
        }
        "Path" | "PathPrefix" => {
            for a in &args {
                if !a.starts_with('/') {
                    return Err(format!("{name}(`{a}`): a path must start with '/': write {name}(`/{a}`)"));
                }
            }
            if name == "Path" {
                Matcher::Path(args)
            } else {
                Matcher::PathPrefix(args)
            }
        }
        "PathRegexp" => {
            one_arg(name, &args, "PathRegexp(`^/api/v[0-9]+`)")?;
            Matcher::PathRegexp(compile_regex(name, &v2_template(&args[0], "[^/]+"))?)
        }
        "Method" => {
            let mut methods = Vec::with_capacity(args.len());
            for a in args {
                let m = Method::from_bytes(a.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("Method(`{a}`): not an HTTP method; write e.g. Method(`GET`)"))?;
                methods.push(m);
            }
            Matcher::Method(methods)
        }
        "Header" | "HeaderRegexp" => {
            if args.len() != 2 {
                return Err(format!(
                    "{name} takes a header name and a value, got {} argument(s): write {name}(`X-Env`, `prod`)",
                    args.len()
                ));
            }
            let hn = http::HeaderName::from_bytes(args[0].as_bytes())
                .map_err(|_| format!("{name}: {:?} is not a valid header name", args[0]))?;
            if name == "Header" {
                Matcher::Header(hn, args[1].clone())
            } else {
                Matcher::HeaderRegexp(hn, compile_regex(name, &args[1])?)
            }
        }
        "Query" => match args.len() {
            1 => match args[0].split_once('=') {
                // v2 form: Query(`key=value`)
                Some((k, v)) => Matcher::Query(k.to_string(), Some(v.to_string())),
                None => Matcher::Query(args[0].clone(), None),
            },
            2 => Matcher::Query(args[0].clone(), Some(args[1].clone())),
            n => {
                return Err(format!(
                    "Query takes a key and an optional value, got {n} arguments: write Query(`page`, `2`)"
                ))
            }
        },
        "QueryRegexp" => {
            if args.len() != 2 {
                return Err("QueryRegexp takes a key and a regex: write QueryRegexp(`page`, `^[0-9]+$`)".into());
            }
            Matcher::QueryRegexp(args[0].clone(), compile_regex(name, &args[1])?)
        }
        "ClientIP" => {
            let mut nets = Vec::with_capacity(args.len());
            for a in args {
                nets.push(parse_net(&a).map_err(|e| format!("ClientIP(`{a}`): {e}"))?);
            }
            Matcher::ClientIp(nets)
        }
        other => {
            let known = [
                "Host", "HostRegexp", "Path", "PathPrefix", "PathRegexp", "Method", "Header",
                "HeaderRegexp", "Query", "QueryRegexp", "ClientIP",
            ];
            let hint = known
                .iter()
                .find(|k| k.eq_ignore_ascii_case(other))
                .map(|k| format!(" (did you mean {k}?)"))
                .unwrap_or_default();
            return Err(format!(
                "unknown matcher {other}{hint}; known: {}",
                known.join(", ")
            ));
        }
    })
}

/// Parses `10.0.0.0/8` or a bare address (as a /32 or /128).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
        "not an IP address or CIDR range; write e.g. `10.0.0.0/8` or `192.168.1.7`".to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn view<'a>(
        method: &'a Method,
        host: &'a str,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
    ) -> RequestView<'a> {
        RequestView {
            method,
            host,
            path,
            query,
            headers,
            client_ip: "10.1.2.3".parse().unwrap(),
        }
    }

    fn m(rule: &str, host: &str, path: &str) -> bool {
        let h = HeaderMap::new();
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        Rule::parse(rule)
            .unwrap()
            .matches(&view(&Method::GET, host, path, query, &h))
    }

    #[test]
    fn host_and_paths() {
        assert!(m("Host(`app.b3.swarm`)", "app.b3.swarm", "/"));
        assert!(m("Host(`App.B3.swarm`)", "app.b3.swarm", "/"));
        assert!(!m("Host(`app.b3.swarm`)", "other.b3.swarm", "/"));
        assert!(m("Host(`a`) && PathPrefix(`/api`)", "a", "/api/x"));
        assert!(!m("Host(`a`) && PathPrefix(`/api`)", "a", "/ap"));
        assert!(m("Path(`/x`)", "a", "/x"));
        assert!(!m("Path(`/x`)", "a", "/x/"));
        assert!(m("Host(`a`, `b`)", "b", "/"));
        assert!(m("PathRegexp(`^/v[0-9]+/`)", "a", "/v2/x"));
        assert!(m("HostRegexp(`^.+\\.b3\\.swarm$`)", "x.b3.swarm", "/"));
        assert!(m(
            "HostRegexp(`{sub:[a-z]+}.b3.swarm`)",
            "abc.b3.swarm",
            "/"
        ));
        assert!(!m(
            "HostRegexp(`{sub:[a-z]+}.b3.swarm`)",
            "abc.b3xswarm",
            "/"
        ));
    }

    #[test]
    fn boolean_operators_and_precedence() {
        // && binds tighter than ||.
        assert!(m("Host(`x`) || Host(`a`) && Path(`/p`)", "x", "/q"));
        assert!(!m("(Host(`x`) || Host(`a`)) && Path(`/p`)", "x", "/q"));
        assert!(m("!Host(`x`)", "y", "/"));
        assert!(!m("!Host(`x`)", "x", "/"));
        assert!(m("!(Host(`x`) || Host(`y`))", "z", "/"));
    }

    #[test]
    fn method_header_query_client_ip() {
        let mut h = HeaderMap::new();
        h.insert("x-env", "prod".parse().unwrap());
        let r = view(&Method::POST, "a", "/", Some("page=2&q=hello+world"), &h);
        let ok = |s: &str| Rule::parse(s).unwrap().matches(&r);
        assert!(ok("Method(`POST`)"));
        assert!(ok("Method(`get`, `post`)"));
        assert!(!ok("Method(`GET`)"));
        assert!(ok("Header(`X-Env`, `prod`)"));
        assert!(!ok("Header(`X-Env`, `dev`)"));
        assert!(ok("HeaderRegexp(`X-Env`, `^pr`)"));
        assert!(ok("Query(`page`, `2`)"));
        assert!(ok("Query(`page=2`)"));
        assert!(ok("Query(`q`, `hello world`)"));
        assert!(ok("Query(`page`)"));
        assert!(!ok("Query(`nope`)"));
        assert!(ok("QueryRegexp(`page`, `^[0-9]$`)"));
        assert!(ok("ClientIP(`10.0.0.0/8`)"));
        assert!(ok("ClientIP(`192.168.0.1`, `10.1.2.3`)"));
        assert!(!ok("ClientIP(`192.168.0.0/16`)"));
    }

    #[test]
    fn errors_are_precise() {
        let e = |s: &str| Rule::parse(s).unwrap_err();
        let err = e("Host(app.b3.swarm)");
        assert!(err.message.contains("write Host(`app.b3.swarm`)"), "{err}");
        let err = e("Host(app)");
        assert!(err.message.contains("not quoted"), "{err}");
        assert_eq!(err.column, 5);
        assert!(e("Host(`a`").message.contains("')'"));
        assert!(e("Hots(`a`)").message.contains("unknown matcher Hots"));
        assert!(e("host(`a`)").message.contains("did you mean Host"));
        assert!(e("Host(`a`) & Path(`/`)").message.contains("'&&'"));
        assert!(e("Host(`a`) Path(`/`)").message.contains("&& or ||"));
        assert!(e("Host(`a`) &&").message.contains("ends too early"));
        assert!(e("").message.contains("empty rule"));
        assert!(e("Path(`x`)").message.contains("start with '/'"));
        assert!(e("PathRegexp(`(`)")
            .message
            .contains("invalid regular expression"));
        assert!(e("ClientIP(`nope`)").message.contains("CIDR"));
        assert!(e("Host('a')").message.contains("backticks"));
        assert!(e("Host(`a)").message.contains("not closed"));
        let deep = "(".repeat(100) + "Host(`a`)" + &")".repeat(100);
        assert!(e(&deep).message.contains("nested deeper"));
    }

    #[test]
    fn required_hosts_for_the_host_index() {
        let rh = |s: &str| Rule::parse(s).unwrap().required_hosts();
        assert_eq!(rh("Host(`a`)"), Some(vec!["a".to_string()]));
        assert_eq!(rh("Host(`a`) && Path(`/x`)"), Some(vec!["a".to_string()]));
        assert_eq!(
            rh("Host(`a`) || Host(`b`)"),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(rh("Host(`a`) || Path(`/x`)"), None);
        assert_eq!(rh("!Host(`a`)"), None);
        assert_eq!(rh("PathPrefix(`/`)"), None);
    }

    #[test]
    fn normalizes_hosts() {
        assert_eq!(normalize_host("App.B3.Swarm:8443"), "app.b3.swarm");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("example.com."), "example.com");
    }

    fn arb_rule() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            "[a-c]".prop_map(|h| format!("Host(`{h}`)")),
            "/[a-c]{0,2}".prop_map(|p| format!("PathPrefix(`{p}`)")),
            "/[a-c]{0,2}".prop_map(|p| format!("Path(`{p}`)")),
            Just("Method(`GET`)".to_string()),
        ];
        leaf.prop_recursive(4, 32, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} && {b}")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} || {b})")),
                inner.prop_map(|a| format!("!({a})")),
            ]
        })
    }

    proptest! {
        // Fuzz: the parser never panics on arbitrary input.
        #[test]
        fn parser_never_panics(s in "\\PC{0,200}") {
            let _ = Rule::parse(&s);
        }

        #[test]
        fn parser_never_panics_on_rule_like_noise(s in "[HostPathMeQuryClinIP()`\"&|!, /a-z]{0,120}") {
            let _ = Rule::parse(&s);
        }

        // The host index never excludes a request the rule matches.
        #[test]
        fn required_hosts_is_sound(rule in arb_rule(), host in "[a-d]", path in "/[a-c]{0,3}") {
            let r = Rule::parse(&rule).unwrap();
            let h = HeaderMap::new();
            let v = view(&Method::GET, &host, &path, None, &h);
            if r.matches(&v) {
                if let Some(hosts) = r.required_hosts() {
                    prop_assert!(hosts.contains(&host), "{rule} matched {host} but index says {hosts:?}");
                }
            }
        }

        // De Morgan holds for the evaluator.
        #[test]
        fn de_morgan(a in arb_rule(), b in arb_rule(), host in "[a-d]", path in "/[a-c]{0,3}") {
            let h = HeaderMap::new();
            let v = view(&Method::GET, &host, &path, None, &h);
            let l = Rule::parse(&format!("!(({a}) || ({b}))")).unwrap().matches(&v);
            let r = Rule::parse(&format!("!({a}) && !({b})")).unwrap().matches(&v);
            prop_assert_eq!(l, r);
        }
    }
}
