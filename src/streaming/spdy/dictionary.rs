//! The preset zlib dictionary of SPDY/3 header compression (SPDY draft 3,
//! section 2.6.10.1).
//!
//! The specification defines it as a run of header words, each prefixed with
//! its length as a 32-bit big-endian integer, followed by common values
//! (status lines, dates, media types) without prefixes. It is written here in
//! that form and assembled once; a unit test pins its length and its Adler-32
//! checksum, which is also the dictionary id every SPDY peer puts in the zlib
//! stream header.

use std::sync::LazyLock;

/// The length-prefixed words at the start of the dictionary.
const WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The unprefixed tail of the dictionary.
const TAIL: &str = concat!(
    "1001012012022052063003023033043053063074024054064074084094104114124134",
    "14415416417502504505203 Non-Authoritative Information204 No Content301",
    " Moved Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not ",
    "Found500 Internal Server Error501 Not Implemented503 Service Unavailab",
    "leJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, ",
    "Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,imag",
    "e/gif,application/xml,application/xhtml+xml,text/plain,text/javascript",
    ",publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1",
    ",utf-,*,enq=0.",
);

static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut dict = Vec::with_capacity(1423);
    for word in WORDS {
        dict.extend_from_slice(&(word.len() as u32).to_be_bytes());
        dict.extend_from_slice(word.as_bytes());
    }
    dict.extend_from_slice(TAIL.as_bytes());
    dict
});

/// The dictionary bytes, as both ends of a SPDY/3 session preset them.
pub fn dictionary() -> &'static [u8] {
    &DICTIONARY
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adler-32 as RFC 1950 defines it, to check the dictionary id.
    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in data {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    #[test]
    fn dictionary_matches_the_specification() {
        let dict = dictionary();
        assert_eq!(dict.len(), 1423);
        assert_eq!(adler32(dict), 0xe3c6_a7c2);
        assert_eq!(&dict[..11], b"\0\0\0\x07options");
        assert!(dict.ends_with(b",*,enq=0."));
    }
}
