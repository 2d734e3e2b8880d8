//! HTTP/1.1 without I/O: the request head in, a response's bytes out. The connection handling
//! around it is `server.rs`. Every request is answered on its own connection and the
//! connection is closed afterwards (`Connection: close`), so an idle client never holds a
//! worker beyond the request timeout.

use hirte_common::bounds::{WEB_MAX_HEADERS, WEB_MAX_REQUEST_HEAD};
use std::fmt::Write;

/// A request head that was read completely and is one hirte-web serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub head_only: bool,
    /// Path part of the target, percent-decoding left to the router.
    pub path: String,
    /// Query part after `?` (may be empty).
    pub query: String,
}

/// What reading the head so far amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed (and allowed).
    Partial,
    Request(Request),
    /// Answer with this response and close.
    Reject(Response),
}

/// A complete response; `head_only` answers to HEAD leave the body out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Extra header lines (`Name: value`).
    pub headers: Vec<(&'static str, String)>,
}

pub const TEXT: &str = "text/plain; charset=utf-8";
pub const JSON: &str = "application/json";

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// A plain-text error naming the problem, one line.
    pub fn error(status: u16, message: &str) -> Self {
        Response::new(
            status,
            TEXT,
            format!("{} {}: {message}\n", status, reason(status)),
        )
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Status line, headers and (unless `head_only`) the body.
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut head = String::with_capacity(512);
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
             Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
             X-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\n\
             Content-Security-Policy: default-src 'self'; img-src 'self' data:; frame-ancestors 'none'\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Parses the bytes read so far (at most [`WEB_MAX_REQUEST_HEAD`]).
// [impl->req~web.bad-input~1]
pub fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; WEB_MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if buf.len() >= WEB_MAX_REQUEST_HEAD => {
            return Parsed::Reject(too_large())
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Reject(Response::error(
                431,
                &format!("more than {WEB_MAX_HEADERS} header fields"),
            ))
        }
        Err(httparse::Error::Version) => {
            return Parsed::Reject(Response::error(
                505,
                "only HTTP/1.0 and HTTP/1.1 are served",
            ))
        }
        Err(e) => return Parsed::Reject(Response::error(400, &format!("malformed request: {e}"))),
    }
    let method = req.method.unwrap_or("");
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return Parsed::Reject(
                Response::error(
                    405,
                    &format!("method {method} is not allowed (read-only: GET, HEAD)"),
                )
                .with_header("Allow", "GET, HEAD"),
            )
        }
    };
    for h in req.headers.iter() {
        let has_body = (h.name.eq_ignore_ascii_case("content-length")
            && h.value
                .iter()
                .any(|b| *b != b'0' && !b.is_ascii_whitespace()))
            || h.name.eq_ignore_ascii_case("transfer-encoding");
        if has_body {
            return Parsed::Reject(Response::error(
                413,
                "requests with a body are not accepted",
            ));
        }
    }
    let target = req.path.unwrap_or("");
    if !target.starts_with('/') {
        return Parsed::Reject(Response::error(400, "the request target must be a path"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Parsed::Request(Request {
        head_only,
        path: path.to_string(),
        query: query.to_string(),
    })
}

/// The 431 for a head larger than [`WEB_MAX_REQUEST_HEAD`].
pub fn too_large() -> Response {
    Response::error(
        431,
        &format!("request head larger than {WEB_MAX_REQUEST_HEAD} bytes"),
    )
}

/// `key=value` pairs of a query, percent-decoded; `None` if one is malformed.
pub fn query_pairs(query: &str) -> Option<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

/// `%XX` and `+` decoding; `None` for a bad escape or bytes that are not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(p: Parsed) -> u16 {
        match p {
            Parsed::Reject(r) => r.status,
            Parsed::Request(_) => 200,
            Parsed::Partial => 0,
        }
    }

    #[test]
    fn parses_get_and_head() {
        let p = parse(b"GET /api/units?node=n1 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            p,
            Parsed::Request(Request {
                head_only: false,
                path: "/api/units".into(),
                query: "node=n1".into()
            })
        );
        assert!(matches!(parse(b"HEAD / HTTP/1.0\r\n\r\n"), Parsed::Request(r) if r.head_only));
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost"), Parsed::Partial);
    }

    // [utest->req~web.bad-input~1]
    // [utest->req~web.read-only~1]
    #[test]
    fn rejects_what_it_does_not_serve() {
        for m in [
            "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
        ] {
            let p = parse(format!("{m} / HTTP/1.1\r\n\r\n").as_bytes());
            match p {
                Parsed::Reject(r) => {
                    assert_eq!(r.status, 405, "{m}");
                    assert!(r.headers.contains(&("Allow", "GET, HEAD".to_string())));
                }
                other => panic!("{m}: {other:?}"),
            }
        }
        assert_eq!(
            status(parse(b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n")),
            413
        );
        assert_eq!(
            status(parse(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")),
            200
        );
        assert_eq!(
            status(parse(
                b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            )),
            413
        );
        assert_eq!(status(parse(b"GET http://x/ HTTP/1.1\r\n\r\n")), 400);
        assert_eq!(status(parse(b"GET / HTTP/2.0\r\n\r\n")), 505);
        assert_eq!(status(parse(b"\x00\x01garbage\r\n\r\n")), 400);
        let many: String = (0..=WEB_MAX_HEADERS)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect();
        assert_eq!(
            status(parse(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes())),
            431
        );
        let long = vec![b'a'; WEB_MAX_REQUEST_HEAD];
        let mut big = b"GET /".to_vec();
        big.extend_from_slice(&long);
        big.truncate(WEB_MAX_REQUEST_HEAD);
        assert_eq!(status(parse(&big)), 431);
    }

    #[test]
    fn responses_are_complete() {
        let r = Response::error(404, "no such page: /x").to_bytes(false);
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Content-Length: 32\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n404 Not Found: no such page: /x\n"),
            "{text}"
        );
        let head = Response::new(200, TEXT, "body").to_bytes(true);
        assert!(String::from_utf8(head).unwrap().ends_with("Content-Length: 4\r\nConnection: close\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\nContent-Security-Policy: default-src 'self'; img-src 'self' data:; frame-ancestors 'none'\r\n\r\n"));
    }

    #[test]
    fn decodes_queries() {
        assert_eq!(
            query_pairs("node=n%2D1&since=3&x"),
            Some(vec![
                ("node".into(), "n-1".into()),
                ("since".into(), "3".into()),
                ("x".into(), String::new())
            ])
        );
        assert_eq!(query_pairs("node=%zz"), None);
        assert_eq!(query_pairs("node=%ff"), None);
        assert_eq!(query_pairs(""), Some(vec![]));
    }
}
