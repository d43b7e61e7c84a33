//! The pieces of berth's web page that need no server: escaping text for HTML and SVG,
//! charts drawn as SVG ([`chart`]), and the small bounded history of numbers they draw
//! ([`history`]). It works on plain data the server hands it; it never touches HTTP, the
//! store, the registry or the clock (times come in as Unix seconds).

pub mod chart;
pub mod history;

/// `s` with the five characters HTML and XML treat specially replaced by entities, safe
/// inside element text and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn escaping_covers_what_breaks_out_of_text_and_attributes() {
        assert_eq!(
            super::esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(super::esc("plain/name:tag"), "plain/name:tag");
    }
}
