//! The simple repository API, rendered from plain data: PEP 503 HTML and PEP 691 JSON
//! (`api-version` 1.1: `versions`, `size`, `upload-time`), with PEP 592 yanking, PEP 658/714
//! core metadata and `requires-python`; plus content negotiation on `Accept`. No I/O.
//!
//! File links are relative to the project page (`/pypi/<repo>/simple/<project>/`):
//! `../../files/<project>/<version>/<filename>`, so no base URL is needed.

use serde_json::{Value, json};

/// The API version served (PEP 700 added `versions`, `size` and `upload-time` in 1.1).
pub const API_VERSION: &str = "1.1";

/// A representation of the simple API a client can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Representation {
    /// `application/vnd.pypi.simple.v1+json`
    Json,
    /// `application/vnd.pypi.simple.v1+html`
    Html,
    /// `text/html` (PEP 503 as served before PEP 691)
    LegacyHtml,
}

impl Representation {
    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Representation::Json => "application/vnd.pypi.simple.v1+json",
            Representation::Html => "application/vnd.pypi.simple.v1+html",
            Representation::LegacyHtml => "text/html; charset=utf-8",
        }
    }
}

/// Picks the representation an `Accept` header prefers (highest q; on a tie, the order of
/// PEP 691's list: JSON, then v1 HTML, then text/html). No header, or none of these acceptable
/// but a wildcard: text/html. `None`: nothing acceptable (406).
pub fn negotiate(accept: Option<&str>) -> Option<Representation> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Some(Representation::LegacyHtml);
    };
    let mut best: Option<(f32, u8, Representation)> = None;
    for item in accept.split(',') {
        let mut params = item.split(';');
        let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut q = 1.0f32;
        for p in params {
            if let Some((k, v)) = p.split_once('=')
                && k.trim().eq_ignore_ascii_case("q")
            {
                q = v.trim().parse().unwrap_or(0.0);
            }
        }
        let found: &[(u8, Representation)] =
            match media.as_str() {
                "application/vnd.pypi.simple.v1+json"
                | "application/vnd.pypi.simple.latest+json" => &[(0, Representation::Json)],
                "application/vnd.pypi.simple.v1+html"
                | "application/vnd.pypi.simple.latest+html" => &[(1, Representation::Html)],
                "text/html" | "text/*" => &[(2, Representation::LegacyHtml)],
                "*/*" => &[(3, Representation::LegacyHtml)],
                _ => &[],
            };
        for &(rank, rep) in found {
            if q <= 0.0 {
                continue;
            }
            let better = match best {
                None => true,
                Some((bq, brank, _)) => q > bq || (q == bq && rank < brank),
            };
            if better {
                best = Some((q, rank, rep));
            }
        }
    }
    best.map(|(_, _, rep)| rep)
}

/// One file on a project page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub filename: String,
    /// Relative to the project page.
    pub url: String,
    pub sha256: String,
    pub size: u64,
    pub requires_python: Option<String>,
    /// sha256 of the core metadata served as `<url>.metadata`, when it is served.
    pub core_metadata_sha256: Option<String>,
    /// `Some(reason)` when yanked (the reason may be empty).
    pub yanked: Option<String>,
    pub uploaded_ms: u64,
}

/// A project page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectPage {
    /// The normalized name.
    pub name: String,
    /// Every live version, in PEP 440 order.
    pub versions: Vec<String>,
    pub files: Vec<FileEntry>,
}

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

/// `upload-time` as PEP 700 writes it: ISO 8601 UTC with `Z`.
pub fn iso_time(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => "1970-01-01T00:00:00.000Z".to_string(),
    }
}

/// Renders a project page.
pub fn render_project(page: &ProjectPage, rep: Representation) -> String {
    match rep {
        Representation::Json => project_json(page).to_string(),
        Representation::Html | Representation::LegacyHtml => project_html(page),
    }
}

fn project_json(page: &ProjectPage) -> Value {
    let files: Vec<Value> = page
        .files
        .iter()
        .map(|f| {
            let mut file = json!({
                "filename": f.filename,
                "url": f.url,
                "hashes": { "sha256": f.sha256 },
                "size": f.size,
                "upload-time": iso_time(f.uploaded_ms),
                "yanked": match &f.yanked {
                    None => Value::Bool(false),
                    Some(reason) if reason.is_empty() => Value::Bool(true),
                    Some(reason) => Value::String(reason.clone()),
                },
            });
            if let Some(rp) = &f.requires_python {
                file["requires-python"] = json!(rp);
            }
            match &f.core_metadata_sha256 {
                Some(sha) => {
                    file["core-metadata"] = json!({ "sha256": sha });
                    file["dist-info-metadata"] = json!({ "sha256": sha });
                }
                None => file["core-metadata"] = json!(false),
            }
            file
        })
        .collect();
    json!({
        "meta": { "api-version": API_VERSION },
        "name": page.name,
        "versions": page.versions,
        "files": files,
    })
}

fn project_html(page: &ProjectPage) -> String {
    let name = escape(&page.name);
    let mut out = format!(
        "<!DOCTYPE html>\n<html>\n  <head>\n    <meta name=\"pypi:repository-version\" content=\"{API_VERSION}\">\n    <title>Links for {name}</title>\n  </head>\n  <body>\n    <h1>Links for {name}</h1>\n"
    );
    for f in &page.files {
        let mut attrs = String::new();
        if let Some(rp) = &f.requires_python {
            attrs.push_str(&format!(" data-requires-python=\"{}\"", escape(rp)));
        }
        if let Some(sha) = &f.core_metadata_sha256 {
            attrs.push_str(&format!(
                " data-core-metadata=\"sha256={sha}\" data-dist-info-metadata=\"sha256={sha}\""
            ));
        }
        if let Some(reason) = &f.yanked {
            attrs.push_str(&format!(" data-yanked=\"{}\"", escape(reason)));
        }
        out.push_str(&format!(
            "    <a href=\"{}#sha256={}\"{attrs}>{}</a><br/>\n",
            escape(&f.url),
            f.sha256,
            escape(&f.filename)
        ));
    }
    out.push_str("  </body>\n</html>\n");
    out
}

/// Renders the project list: `(display name, normalized name)` pairs.
pub fn render_projects(projects: &[(String, String)], rep: Representation) -> String {
    match rep {
        Representation::Json => json!({
            "meta": { "api-version": API_VERSION },
            "projects": projects.iter().map(|(name, _)| json!({ "name": name })).collect::<Vec<_>>(),
        })
        .to_string(),
        Representation::Html | Representation::LegacyHtml => {
            let mut out = format!(
                "<!DOCTYPE html>\n<html>\n  <head>\n    <meta name=\"pypi:repository-version\" content=\"{API_VERSION}\">\n    <title>Simple index</title>\n  </head>\n  <body>\n"
            );
            for (name, normalized) in projects {
                out.push_str(&format!(
                    "    <a href=\"{}/\">{}</a><br/>\n",
                    escape(normalized),
                    escape(name)
                ));
            }
            out.push_str("  </body>\n</html>\n");
            out
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PIP: &str = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01";

    #[test]
    fn negotiation_follows_q_values_and_pep_691_order() {
        assert_eq!(negotiate(Some(PIP)), Some(Representation::Json));
        assert_eq!(negotiate(None), Some(Representation::LegacyHtml));
        assert_eq!(negotiate(Some("*/*")), Some(Representation::LegacyHtml));
        assert_eq!(
            negotiate(Some("text/html")),
            Some(Representation::LegacyHtml)
        );
        assert_eq!(
            negotiate(Some(
                "application/vnd.pypi.simple.v1+html, application/vnd.pypi.simple.v1+json;q=0.5"
            )),
            Some(Representation::Html)
        );
        assert_eq!(
            negotiate(Some("application/vnd.pypi.simple.latest+json")),
            Some(Representation::Json)
        );
        assert_eq!(negotiate(Some("application/json")), None);
        assert_eq!(
            negotiate(Some("application/vnd.pypi.simple.v1+json;q=0")),
            None
        );
    }

    fn page() -> ProjectPage {
        ProjectPage {
            name: "tiny-pkg".into(),
            versions: vec!["0.1.0".into(), "0.2.0".into()],
            files: vec![
                FileEntry {
                    filename: "tiny_pkg-0.1.0-py3-none-any.whl".into(),
                    url: "../../files/tiny-pkg/0.1.0/tiny_pkg-0.1.0-py3-none-any.whl".into(),
                    sha256: "ab".repeat(32),
                    size: 1234,
                    requires_python: Some(">=3.8".into()),
                    core_metadata_sha256: Some("cd".repeat(32)),
                    yanked: None,
                    uploaded_ms: 1_700_000_000_123,
                },
                FileEntry {
                    filename: "tiny_pkg-0.2.0.tar.gz".into(),
                    url: "../../files/tiny-pkg/0.2.0/tiny_pkg-0.2.0.tar.gz".into(),
                    sha256: "ef".repeat(32),
                    size: 99,
                    requires_python: None,
                    core_metadata_sha256: None,
                    yanked: Some("broken <build>".into()),
                    uploaded_ms: 0,
                },
            ],
        }
    }

    #[test]
    fn json_page_has_api_1_1_fields() {
        let v: Value =
            serde_json::from_str(&render_project(&page(), Representation::Json)).unwrap();
        assert_eq!(v["meta"]["api-version"], "1.1");
        assert_eq!(v["name"], "tiny-pkg");
        assert_eq!(v["versions"], json!(["0.1.0", "0.2.0"]));
        let wheel = &v["files"][0];
        assert_eq!(wheel["hashes"]["sha256"], "ab".repeat(32));
        assert_eq!(wheel["size"], 1234);
        assert_eq!(wheel["requires-python"], ">=3.8");
        assert_eq!(wheel["core-metadata"]["sha256"], "cd".repeat(32));
        assert_eq!(wheel["dist-info-metadata"]["sha256"], "cd".repeat(32));
        assert_eq!(wheel["yanked"], false);
        assert_eq!(wheel["upload-time"], "2023-11-14T22:13:20.123Z");
        let sdist = &v["files"][1];
        assert_eq!(sdist["yanked"], "broken <build>");
        assert_eq!(sdist["core-metadata"], false);
        assert!(sdist.get("requires-python").is_none());
        assert!(sdist.get("dist-info-metadata").is_none());
    }

    #[test]
    fn html_page_escapes_and_carries_the_data_attributes() {
        let html = render_project(&page(), Representation::Html);
        assert!(html.contains(&format!(
            "<a href=\"../../files/tiny-pkg/0.1.0/tiny_pkg-0.1.0-py3-none-any.whl#sha256={}\" data-requires-python=\"&gt;=3.8\" data-core-metadata=\"sha256={cd}\" data-dist-info-metadata=\"sha256={cd}\">tiny_pkg-0.1.0-py3-none-any.whl</a>",
            "ab".repeat(32),
            cd = "cd".repeat(32)
        )), "{html}");
        assert!(
            html.contains("data-yanked=\"broken &lt;build&gt;\">tiny_pkg-0.2.0.tar.gz</a>"),
            "{html}"
        );
        assert!(html.contains("pypi:repository-version\" content=\"1.1\""));
    }

    #[test]
    fn project_list() {
        let list = vec![("Tiny_Pkg".to_string(), "tiny-pkg".to_string())];
        let html = render_projects(&list, Representation::LegacyHtml);
        assert!(html.contains("<a href=\"tiny-pkg/\">Tiny_Pkg</a>"));
        let v: Value = serde_json::from_str(&render_projects(&list, Representation::Json)).unwrap();
        assert_eq!(v["projects"][0]["name"], "Tiny_Pkg");
    }
}
