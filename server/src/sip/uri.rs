//! SIP URIs and name-addr values (From, To, Contact, Route), parsed on demand.
//!
//! Only what routing needs is broken out: user, host, port and parameters. Anything else in
//! a URI is kept verbatim so it survives being passed on.

use super::error::SipError;

/// A `sip:`/`sips:` URI. `user` keeps dots and other characters as written
/// (`sip:john.doe@host` has user `john.doe`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    pub scheme: String,
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// URI parameters in order, `;lr` as `("lr", None)`.
    pub params: Vec<(String, Option<String>)>,
    /// The `?headers` part, kept as written.
    pub headers: Option<String>,
}

impl SipUri {
    pub fn parse(s: &str) -> Result<SipUri, SipError> {
        let bad = || SipError::bad_request(format!("bad SIP URI: {s}"));
        let (scheme, rest) = s.trim().split_once(':').ok_or_else(bad)?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "sip" && scheme != "sips" {
            return Err(bad());
        }
        let (rest, headers) = match rest.split_once('?') {
            Some((r, h)) => (r, Some(h.to_owned())),
            None => (rest, None),
        };
        // The user part may itself contain ';' (user parameters), so split on the last '@'.
        let (user, hostpart) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let mut parts = hostpart.split(';');
        let hostport = parts.next().ok_or_else(bad)?;
        let (host, port) = split_host_port(hostport).ok_or_else(bad)?;
        let params = parts
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                None => (p.to_owned(), None),
            })
            .collect();
        if user.is_some_and(str::is_empty) {
            return Err(bad());
        }
        Ok(SipUri {
            scheme,
            user: user.map(str::to_owned),
            host,
            port,
            params,
            headers,
        })
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// The user part with its `%HH` escapes decoded: `sip:%61lice@host` is alice's URI
    /// (RFC 3261 §19.1.4 compares users unescaped). None when there is no user, or an escape
    /// is broken or decodes to something that is not UTF-8.
    pub fn user_unescaped(&self) -> Option<String> {
        unescape(self.user.as_deref()?)
    }

    pub fn set_param(&mut self, name: &str, value: Option<&str>) {
        self.params.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.params
            .push((name.to_owned(), value.map(str::to_owned)));
    }

    /// The transport the URI asks for, upper-case, UDP when it says nothing
    /// (TLS for `sips:`).
    pub fn transport(&self) -> String {
        match self.param("transport").flatten() {
            Some(t) => t.to_ascii_uppercase(),
            None if self.scheme == "sips" => "TLS".into(),
            None => "UDP".into(),
        }
    }
}

impl std::fmt::Display for SipUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:", self.scheme)?;
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        if self.host.contains(':') && !self.host.starts_with('[') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        for (k, v) in &self.params {
            match v {
                Some(v) => write!(f, ";{k}={v}")?,
                None => write!(f, ";{k}")?,
            }
        }
        if let Some(h) = &self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

/// Decodes `%HH` escapes. None for a `%` not followed by two hex digits, or bytes that are
/// not UTF-8.
pub fn unescape(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`. Returns `None` for an empty host or a
/// port that is not a number.
pub fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        // An IPv6 reference holds an IPv6 address and nothing else (RFC 3261 §25.1).
        host.parse::<std::net::Ipv6Addr>().ok()?;
        return Some((host.to_owned(), port));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p.parse().ok()?)),
        _ => (s, None),
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '@') {
        return None;
    }
    Some((host.to_owned(), port))
}

/// A From/To/Contact/Route value: optional display name, the URI, and header parameters
/// (the `tag`, `expires`, ...). Whether `<...>` was used is remembered so an unmodified value
/// prints back the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    pub display: Option<String>,
    pub uri: String,
    pub params: Vec<(String, Option<String>)>,
}

impl NameAddr {
    pub fn parse(value: &str) -> Result<NameAddr, SipError> {
        let bad = || SipError::bad_request(format!("bad address: {value}"));
        let v = value.trim();
        if let Some(lt) = find_unquoted(v, '<') {
            let display = v[..lt].trim();
            let after = &v[lt + 1..];
            let gt = after.find('>').ok_or_else(bad)?;
            let uri = after[..gt].trim();
            if uri.is_empty() {
                return Err(bad());
            }
            Ok(NameAddr {
                display: (!display.is_empty()).then(|| display.to_owned()),
                uri: uri.to_owned(),
                params: parse_params(&after[gt + 1..]),
            })
        } else {
            // addr-spec form: parameters after the URI belong to the header, not the URI.
            let (uri, params) = match v.split_once(';') {
                Some((u, p)) => (u, parse_params(&format!(";{p}"))),
                None => (v, Vec::new()),
            };
            if uri.is_empty() || !uri.contains(':') {
                return Err(bad());
            }
            Ok(NameAddr {
                display: None,
                uri: uri.to_owned(),
                params,
            })
        }
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    pub fn tag(&self) -> Option<&str> {
        self.param("tag").flatten()
    }

    pub fn set_param(&mut self, name: &str, value: Option<&str>) {
        self.params.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.params
            .push((name.to_owned(), value.map(str::to_owned)));
    }

    pub fn sip_uri(&self) -> Result<SipUri, SipError> {
        SipUri::parse(&self.uri)
    }
}

impl std::fmt::Display for NameAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(d) = &self.display {
            write!(f, "{d} ")?;
        }
        write!(f, "<{}>", self.uri)?;
        for (k, v) in &self.params {
            match v {
                Some(v) => write!(f, ";{k}={v}")?,
                None => write!(f, ";{k}")?,
            }
        }
        Ok(())
    }
}

/// The first `needle` outside a quoted string; `\"` inside one is a quoted pair, not its end.
fn find_unquoted(s: &str, needle: char) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == needle && !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

fn parse_params(s: &str) -> Vec<(String, Option<String>)> {
    s.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.trim().to_owned(), Some(v.trim().to_owned())),
            None => (p.to_owned(), None),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_keeps_dotted_users_ipv6_and_params() {
        let u = SipUri::parse("sip:john.doe@[2001:db8::1]:5070;transport=tcp;lr").unwrap();
        assert_eq!(u.user.as_deref(), Some("john.doe"));
        assert_eq!(u.host, "2001:db8::1");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.transport(), "TCP");
        assert_eq!(u.param("lr"), Some(None));
        assert_eq!(
            u.to_string(),
            "sip:john.doe@[2001:db8::1]:5070;transport=tcp;lr"
        );
        assert!(SipUri::parse("tel:+123").is_err());
        assert!(SipUri::parse("sip:@host").is_err());
        assert!(SipUri::parse("sip:host:notaport").is_err());
    }

    #[test]
    fn escapes_and_ipv6_references() {
        let u = SipUri::parse("sip:%61li%63e@host").unwrap();
        assert_eq!(u.user.as_deref(), Some("%61li%63e"), "kept as written");
        assert_eq!(u.user_unescaped().as_deref(), Some("alice"));
        assert_eq!(unescape("a%2"), None);
        assert_eq!(unescape("a%+1"), None);
        assert_eq!(unescape("%C3%A9").as_deref(), Some("\u{e9}"));
        assert_eq!(unescape("%FF"), None, "not UTF-8");
        assert!(SipUri::parse("sip:a@[::zz]").is_err());
        assert!(SipUri::parse("sip:a@[::1").is_err());
        assert!(SipUri::parse("sip:a@[::1]:5060").is_ok());
    }

    #[test]
    fn quoted_pairs_do_not_end_a_display_name() {
        let n = NameAddr::parse("\"a \\\" <sip:x@y> \\\"\" <sip:real@host>;tag=t").unwrap();
        assert_eq!(n.uri, "sip:real@host");
        assert_eq!(n.tag(), Some("t"));
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse("\"A, B <x>\" <sip:a@b>;tag=1").unwrap();
        assert_eq!(n.display.as_deref(), Some("\"A, B <x>\""));
        assert_eq!(n.uri, "sip:a@b");
        assert_eq!(n.tag(), Some("1"));
        let n = NameAddr::parse("sip:a@b;tag=2").unwrap();
        assert_eq!(n.uri, "sip:a@b");
        assert_eq!(n.tag(), Some("2"));
        assert!(NameAddr::parse("<>").is_err());
        assert!(NameAddr::parse("<sip:a@b").is_err());
    }
}
