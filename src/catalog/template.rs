//! Matching URIs against RFC 6570 URI templates, for routing `resources/read` of templated
//! resources. Supports the expressions resource templates use in practice: simple `{var}`
//! (one path segment's worth: no `/`, `?` or `#`), reserved `{+var}` and fragment `{#var}`
//! (anything), and path-segment `{/var}` (one `/`-prefixed segment). Templates with other
//! operators are not routed.

use regex::Regex;

/// A compiled URI template.
#[derive(Debug, Clone)]
pub struct UriTemplate {
    regex: Regex,
}

// === impl UriTemplate ===

impl UriTemplate {
    /// Compiles `template`; `None` when it uses an unsupported expression.
    pub fn parse(template: &str) -> Option<Self> {
        let mut pattern = String::from("^");
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            pattern.push_str(&regex::escape(&rest[..start]));
            let end = rest[start..].find('}')? + start;
            let expression = &rest[start + 1..end];
            let piece = match expression.chars().next()? {
                '+' | '#' => ".*",
                '/' => "(?:/[^/?#]*)*",
                c if c.is_ascii_alphanumeric() || c == '_' => "[^/?#]*",
                _ => return None,
            };
            pattern.push_str(piece);
            rest = &rest[end + 1..];
        }
        if rest.contains('}') {
            return None;
        }
        pattern.push_str(&regex::escape(rest));
        pattern.push('$');
        Regex::new(&pattern).ok().map(|regex| Self { regex })
    }

    /// Whether `uri` is an expansion of this template.
    pub fn matches(&self, uri: &str) -> bool {
        self.regex.is_match(uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_variables_match_one_segment() {
        let template = UriTemplate::parse("test://template/{id}/data").unwrap();
        assert!(template.matches("test://template/123/data"));
        assert!(!template.matches("test://template/1/2/data"));
        assert!(!template.matches("test://template/123/data/extra"));
        assert!(!template.matches("other://template/123/data"));
    }

    #[test]
    fn reserved_expansion_matches_slashes_and_literals_are_escaped() {
        let template = UriTemplate::parse("file:///{+path}").unwrap();
        assert!(template.matches("file:///a/b/c.txt"));
        let dotted = UriTemplate::parse("a.b://{x}").unwrap();
        assert!(!dotted.matches("aXb://1"));
    }

    #[test]
    fn unsupported_or_broken_templates_are_refused() {
        assert!(UriTemplate::parse("x://{?query}").is_none());
        assert!(UriTemplate::parse("x://{open").is_none());
        assert!(UriTemplate::parse("x://close}").is_none());
    }
}
