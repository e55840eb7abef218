//! A report as one self-contained HTML page: the markdown rendered (pulldown-cmark, tables on),
//! every figure inlined as an SVG data URI (no network, no side files), verdicts coloured, and a
//! few lines of script that record on the page whether every figure decoded — what the headless
//! Chromium test reads back.

use aligngym_agents::{AgentError, Result};
use base64::Engine;
use pulldown_cmark::{html, CowStr, Event, Options, Parser, Tag};
use std::path::Path;

const STYLE: &str = r#"
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f; margin: 0 auto; max-width: 1180px; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 28px; margin: 8px 0 12px; }
h2 { font-size: 22px; margin-top: 40px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 18px; margin-top: 28px; }
table { border-collapse: collapse; margin: 12px 0; font-size: 13.5px; }
th, td { border: 1px solid #d0d0d5; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f6; }
tr:nth-child(even) td { background: #fafafc; }
code { font: 12.5px ui-monospace, "SFMono-Regular", Menlo, monospace; background: #f3f3f6; padding: 1px 4px; border-radius: 3px; }
img { max-width: 100%; height: auto; display: block; margin: 12px 0; border: 1px solid #eee; }
strong.v-holds { color: #fff; background: #2e7d32; padding: 1px 6px; border-radius: 3px; }
strong.v-refuted { color: #fff; background: #c62828; padding: 1px 6px; border-radius: 3px; }
strong.v-inconclusive { color: #1d1d1f; background: #ffe08a; padding: 1px 6px; border-radius: 3px; }
"#;

/// Marks on `<body>` how many figures there are and how many decoded.
const CHECK: &str = r#"<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-figures", String(imgs.length));
  document.body.setAttribute("data-figures-loaded", String(ok));
});
</script>"#;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A figure referenced as `dir/…/name.png` as a data URI: its SVG sibling when there is one (sharp
/// at any zoom), else the PNG; `None` when neither exists (left as it is).
fn inline_figure(base: &Path, url: &str) -> Option<String> {
    if url.contains("://") || url.starts_with("data:") || url.contains("..") {
        return None;
    }
    let p = base.join(url);
    let svg = p.with_extension("svg");
    let (bytes, mime) = if let Ok(b) = std::fs::read(&svg) {
        (b, "image/svg+xml")
    } else {
        (std::fs::read(&p).ok()?, "image/png")
    };
    Some(format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

/// Render `markdown` (figure paths relative to `base`) as a standalone page titled `title`.
pub fn report_html(markdown: &str, base: &Path, title: &str) -> Result<String> {
    let missing = std::cell::RefCell::new(Vec::new());
    let parser = Parser::new_ext(markdown, Options::ENABLE_TABLES).map(|ev| match ev {
        Event::Start(Tag::Image {
            link_type,
            dest_url,
            title,
            id,
        }) => {
            let dest = match inline_figure(base, &dest_url) {
                Some(d) => CowStr::from(d),
                None => {
                    missing.borrow_mut().push(dest_url.to_string());
                    dest_url
                }
            };
            Event::Start(Tag::Image {
                link_type,
                dest_url: dest,
                title,
                id,
            })
        }
        other => other,
    });
    let mut body = String::new();
    html::push_html(&mut body, parser);
    for v in ["holds", "refuted", "inconclusive"] {
        body = body.replace(
            &format!("<strong>{v}</strong>"),
            &format!("<strong class=\"v-{v}\">{v}</strong>"),
        );
    }
    let missing = missing.into_inner();
    if !missing.is_empty() {
        // A figure that could not be inlined would need a side file: say so rather than ship a
        // page with a hole in it.
        return Err(AgentError::Data(format!(
            "{}: figures of the report are missing: {}",
            base.display(),
            missing.join(", ")
        )));
    }
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}{CHECK}\n</body>\n</html>\n",
        escape(title)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_inlined_and_verdicts_coloured() {
        // A fresh folder of this test's own (pid and clock), removed at the end.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("aligngym-html-{}-{nanos}", std::process::id()));
        assert!(!dir.exists());
        std::fs::create_dir_all(dir.join("c/plots")).unwrap();
        std::fs::write(
            dir.join("c/plots/x.svg"),
            "<svg xmlns='http://www.w3.org/2000/svg'/>",
        )
        .unwrap();
        std::fs::write(dir.join("c/plots/x.png"), [0u8; 4]).unwrap();
        let md = "# T\n\n| a | b |\n|---|---|\n| **holds** | <x> |\n\n![fig](c/plots/x.png)\n";
        let h = report_html(md, &dir, "a <b>").unwrap();
        assert!(h.contains("<title>a &lt;b&gt;</title>"));
        assert!(h.contains("<table>") && h.contains("<strong class=\"v-holds\">holds</strong>"));
        let b64 = base64::engine::general_purpose::STANDARD
            .encode("<svg xmlns='http://www.w3.org/2000/svg'/>");
        assert!(
            h.contains(&format!("src=\"data:image/svg+xml;base64,{b64}\"")),
            "{h}"
        );
        // A figure that is not there is an error, not a broken page.
        assert!(report_html("![f](c/plots/missing.png)", &dir, "t").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
