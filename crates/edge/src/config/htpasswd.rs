//! htpasswd entries (`user:hash`) as used by the basicAuth middleware:
//! bcrypt (`$2y$`, `$2b$`, `$2a$`, from `htpasswd -B`) and Apache MD5
//! (`$apr1$`, from `htpasswd -m` / `openssl passwd -apr1`).

use md5::{Digest, Md5};

/// A password hash from an htpasswd line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hash {
    /// bcrypt, verified with the `bcrypt` crate.
    Bcrypt(String),
    /// Apache MD5: salt and the full `$apr1$salt$hash` string.
    Apr1 {
        /// The salt (up to 8 characters).
        salt: String,
        /// The whole hash string.
        full: String,
    },
}

/// Parses one `user:hash` line.
pub fn parse_line(line: &str) -> Result<(String, Hash), String> {
    let line = line.trim();
    let Some((user, hash)) = line.split_once(':') else {
        return Err("expected `user:hash` (make one with `htpasswd -nbB user password`)".into());
    };
    if user.is_empty() {
        return Err("empty user name before ':'".into());
    }
    let h = if hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$") {
        Hash::Bcrypt(hash.to_string())
    } else if let Some(rest) = hash.strip_prefix("$apr1$") {
        let Some((salt, _)) = rest.split_once('$') else {
            return Err(format!("user {user:?}: malformed $apr1$ hash"));
        };
        Hash::Apr1 {
            salt: salt.to_string(),
            full: hash.to_string(),
        }
    } else {
        return Err(format!(
            "user {user:?}: unsupported hash format; use bcrypt (`htpasswd -nbB`) or apr1 (`htpasswd -nbm`)"
        ));
    };
    Ok((user.to_string(), h))
}

impl Hash {
    /// Whether `password` matches.
    pub fn verify(&self, password: &str) -> bool {
        match self {
            Hash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            Hash::Apr1 { salt, full } => constant_eq(
                apr1(password.as_bytes(), salt.as_bytes()).as_bytes(),
                full.as_bytes(),
            ),
        }
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Apache's MD5-crypt variant.
pub fn apr1(pw: &[u8], salt: &[u8]) -> String {
    const MAGIC: &[u8] = b"$apr1$";
    let salt = &salt[..salt.len().min(8)];
    let mut alt = Md5::new();
    alt.update(pw);
    alt.update(salt);
    alt.update(pw);
    let alt = alt.finalize();
    let mut ctx = Md5::new();
    ctx.update(pw);
    ctx.update(MAGIC);
    ctx.update(salt);
    let mut n = pw.len();
    while n > 0 {
        ctx.update(&alt[..n.min(16)]);
        n = n.saturating_sub(16);
    }
    let mut i = pw.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&pw[..1]);
        }
        i >>= 1;
    }
    let mut fin = ctx.finalize();
    for i in 0..1000 {
        let mut c = Md5::new();
        if i & 1 == 1 {
            c.update(pw);
        } else {
            c.update(fin);
        }
        if i % 3 != 0 {
            c.update(salt);
        }
        if i % 7 != 0 {
            c.update(pw);
        }
        if i & 1 == 1 {
            c.update(fin);
        } else {
            c.update(pw);
        }
        fin = c.finalize();
    }
    const ITOA: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::from("$apr1$");
    out.push_str(&String::from_utf8_lossy(salt));
    out.push('$');
    let mut enc = |v: u32, n: usize| {
        let mut v = v;
        for _ in 0..n {
            out.push(ITOA[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        enc(
            (u32::from(fin[a]) << 16) | (u32::from(fin[b]) << 8) | u32::from(fin[c]),
            4,
        );
    }
    enc(u32::from(fin[11]), 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apr1_matches_openssl() {
        // openssl passwd -apr1 -salt saltsalt secret
        let (user, h) = parse_line("alice:$apr1$saltsalt$LrttParrLPdxvgutaSXWJ0").unwrap();
        assert_eq!(user, "alice");
        assert!(h.verify("secret"));
        assert!(!h.verify("Secret"));
    }

    #[test]
    fn bcrypt_round_trip() {
        let hash = bcrypt::hash("pw", 4).unwrap().replacen("$2b$", "$2y$", 1);
        let (_, h) = parse_line(&format!("bob:{hash}")).unwrap();
        assert!(h.verify("pw"));
        assert!(!h.verify("px"));
    }

    #[test]
    fn rejects_bad_lines() {
        assert!(parse_line("nocolon").unwrap_err().contains("user:hash"));
        assert!(parse_line(":x").is_err());
        assert!(parse_line("u:{SHA}abc")
            .unwrap_err()
            .contains("unsupported"));
    }
}
