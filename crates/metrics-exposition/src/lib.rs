//! What every Switchboard component's `/metrics` serves, and its `build_info`.
//!
//! The operator, the SFU, signaling and the recorder register their metrics with
//! `prometheus-client`, which writes only the OpenMetrics text format. Prometheus
//! scrapes that, but not every reader does: `promtool check metrics` (the lint that
//! holds the names to Prometheus' conventions, run by `e2e/tests/metrics_lint.rs`),
//! older Prometheus servers and other scrapers parse only the classic Prometheus text
//! format (version 0.0.4). The two differ where it matters: an OpenMetrics counter
//! family `foo` has samples `foo_total` (promtool, reading the classic format, sees a
//! counter named `foo` without its `_total` suffix); OpenMetrics has `# UNIT` and
//! `# EOF` lines, `info`, `stateset` and `gaugehistogram` types, `_created` samples,
//! exemplars after a sample's value, and timestamps in seconds (milliseconds in the
//! classic format).
//!
//! So every `/metrics` handler hands its registry and the request's Accept header to
//! [`encode`]: a scraper that asks for `application/openmetrics-text` (Prometheus
//! does, first) gets OpenMetrics as before; anything else (curl, a plain
//! `Accept: text/plain`, no header) gets the classic format, converted from the
//! OpenMetrics text by [`to_prometheus_text`]. One crate, so the four components
//! cannot drift apart; pure (no HTTP framework, only `prometheus-client`), so the
//! conversion is tested as tables of text in, text out.
//!
//! [`build_info`] registers `<prefix>_build_info{version="…"} 1` as a gauge (the classic
//! format has no `info` type): which version each pod runs, joinable onto any of its
//! series.

use std::fmt::Write as _;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Content type of the OpenMetrics text `prometheus-client` writes.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The text format a `/metrics` response is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    PrometheusText,
}

impl Format {
    /// The format for a request's Accept header: OpenMetrics when the header names
    /// `application/openmetrics-text` with a quality above 0 and at least that of the
    /// classic format (`text/plain`, `text/*`, `*/*`); otherwise the classic format,
    /// which is also the answer to no header at all.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let (mut openmetrics, mut classic) = (0.0_f64, 0.0_f64);
        for range in accept.unwrap_or_default().split(',') {
            let mut params = range.split(';');
            let media = params.next().unwrap_or_default().trim().to_ascii_lowercase();
            let q = params
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(1.0, |(_, v)| v.trim().parse::<f64>().unwrap_or(0.0));
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => classic = classic.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= classic { Self::OpenMetrics } else { Self::PrometheusText }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => OPENMETRICS,
            Self::PrometheusText => PROMETHEUS_TEXT,
        }
    }
}

/// Registers `build_info{version="<version>"} 1` (under the registry's prefix) as a
/// gauge family. Call it with the component's own `env!("CARGO_PKG_VERSION")`.
pub fn build_info(registry: &mut Registry, version: &str) {
    let info = Family::<[(&'static str, String); 1], Gauge>::default();
    info.get_or_create(&[("version", version.to_owned())]).set(1);
    registry.register("build_info", "The version this component was built from (the version label); always 1", info);
}

/// The registry's metrics in the format the Accept header asks for (see
/// [`Format::negotiate`]): the Content-Type to answer with, and the body.
pub fn encode(registry: &Registry, accept: Option<&str>) -> (&'static str, String) {
    let mut openmetrics = String::new();
    prometheus_client::encoding::text::encode(&mut openmetrics, registry).expect("encoding into a String");
    let format = Format::negotiate(accept);
    let body = match format {
        Format::OpenMetrics => openmetrics,
        Format::PrometheusText => to_prometheus_text(&openmetrics),
    };
    (format.content_type(), body)
}

/// Converts OpenMetrics text into the classic Prometheus text format (0.0.4):
///
/// | OpenMetrics | classic |
/// |---|---|
/// | `counter` family `foo`, samples `foo_total` | `# HELP`/`# TYPE foo_total counter`, the same samples |
/// | `histogram`, `summary`, `gauge` | unchanged |
/// | `info` family `foo`, samples `foo_info` | `# TYPE foo_info gauge` |
/// | `stateset` | `gauge` |
/// | `gaugehistogram` `foo` | `histogram`, `foo_gsum` and `foo_gcount` named `foo_sum` and `foo_count` (as the Go client writes it) |
/// | `unknown` | `untyped` |
/// | `_created` samples, `# UNIT`, `# EOF`, empty lines | dropped |
/// | exemplars (` # {…} value [timestamp]` after a sample) | dropped |
/// | a sample's timestamp, in seconds | in milliseconds |
/// | `\"` in `# HELP` text | `"` (the classic format escapes only `\\` and `\n` there) |
///
/// Label sets are copied as they are: both formats escape label values alike.
/// Lines that are neither metadata nor samples are dropped.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut families: Vec<MetricFamily<'_>> = Vec::new();
    for line in openmetrics.lines() {
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next()) {
                (Some("HELP"), Some(name)) => family(&mut families, name).help = Some(words.next().unwrap_or_default()),
                (Some("TYPE"), Some(name)) => {
                    family(&mut families, name).kind = Some(Kind::parse(words.next().unwrap_or_default().trim()))
                }
                _ => {} // # UNIT (the unit is in the name already), # EOF
            }
            continue;
        }
        let Some(sample) = Sample::parse(line) else { continue };
        match families.last_mut() {
            Some(f) if f.owns(sample.name) => f.samples.push(sample),
            _ => families.push(MetricFamily { name: sample.name, help: None, kind: None, samples: vec![sample] }),
        }
    }

    let mut out = String::with_capacity(openmetrics.len());
    for f in &families {
        let all = f.samples.iter();
        let not_created = |s: &&Sample<'_>| f.suffix(s) != Some("_created");
        match f.kind {
            // Samples without metadata stay so.
            None => all.for_each(|s| s.write(&mut out)),
            Some(Kind::Counter) => f.write(&mut out, "_total", "counter", all.filter(not_created)),
            Some(Kind::Gauge | Kind::StateSet) => f.write(&mut out, "", "gauge", all),
            Some(Kind::Histogram) => f.write(&mut out, "", "histogram", all.filter(not_created)),
            Some(Kind::Summary) => f.write(&mut out, "", "summary", all.filter(not_created)),
            Some(Kind::Info) => f.write(&mut out, "_info", "gauge", all),
            Some(Kind::Unknown) => f.write(&mut out, "", "untyped", all),
            Some(Kind::GaugeHistogram) => {
                // The classic format has no gauge histogram: written as a histogram, as
                // Prometheus' Go client writes one (`_gsum`, `_gcount` as `_sum`, `_count`).
                f.write(&mut out, "", "histogram", std::iter::empty());
                for s in &f.samples {
                    match f.suffix(s) {
                        Some("_gsum") => s.write_as(&mut out, &format!("{}_sum", f.name)),
                        Some("_gcount") => s.write_as(&mut out, &format!("{}_count", f.name)),
                        _ => s.write(&mut out),
                    }
                }
            }
        }
    }
    out
}

/// The family `name`: the last one if it has that name, else a new one.
fn family<'a, 'f>(families: &'f mut Vec<MetricFamily<'a>>, name: &'a str) -> &'f mut MetricFamily<'a> {
    if families.last().is_none_or(|f| f.name != name) {
        families.push(MetricFamily { name, help: None, kind: None, samples: Vec::new() });
    }
    families.last_mut().expect("just pushed")
}

/// OpenMetrics metric types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    GaugeHistogram,
    Summary,
    Info,
    StateSet,
    Unknown,
}

impl Kind {
    fn parse(s: &str) -> Self {
        match s {
            "counter" => Self::Counter,
            "gauge" => Self::Gauge,
            "histogram" => Self::Histogram,
            "gaugehistogram" => Self::GaugeHistogram,
            "summary" => Self::Summary,
            "info" => Self::Info,
            "stateset" => Self::StateSet,
            _ => Self::Unknown,
        }
    }

    /// What the names of a family's samples add to the family's name.
    fn suffixes(self) -> &'static [&'static str] {
        match self {
            Self::Counter => &["_total", "_created"],
            Self::Gauge | Self::StateSet | Self::Unknown => &[""],
            Self::Histogram => &["_bucket", "_sum", "_count", "_created"],
            Self::GaugeHistogram => &["_bucket", "_gsum", "_gcount"],
            Self::Summary => &["", "_sum", "_count", "_created"],
            Self::Info => &["_info"],
        }
    }
}

struct MetricFamily<'a> {
    name: &'a str,
    help: Option<&'a str>,
    /// `None`: samples without a `# TYPE`.
    kind: Option<Kind>,
    samples: Vec<Sample<'a>>,
}

impl MetricFamily<'_> {
    fn owns(&self, sample: &str) -> bool {
        let Some(rest) = sample.strip_prefix(self.name) else { return false };
        match self.kind {
            None => rest.is_empty(),
            Some(kind) => kind.suffixes().contains(&rest),
        }
    }

    /// What a sample's name adds to the family's.
    fn suffix<'s>(&self, sample: &Sample<'s>) -> Option<&'s str> {
        sample.name.strip_prefix(self.name)
    }

    /// `# HELP`, `# TYPE` of `<name><suffix>` and the samples.
    fn write<'s, 'a: 's>(
        &self,
        out: &mut String,
        suffix: &str,
        kind: &str,
        samples: impl Iterator<Item = &'s Sample<'a>>,
    ) {
        let name = self.name;
        if let Some(help) = self.help {
            let _ = writeln!(out, "# HELP {name}{suffix} {}", classic_help(help));
        }
        let _ = writeln!(out, "# TYPE {name}{suffix} {kind}");
        samples.for_each(|s| s.write(out));
    }
}

/// OpenMetrics escapes `\`, newline and `"` in help text; the classic format only the first two.
fn classic_help(help: &str) -> String {
    let mut out = String::with_capacity(help.len());
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('"') => out.push('"'),
            Some(next) => {
                out.push('\\');
                out.push(next);
            }
            None => out.push_str("\\\\"),
        }
    }
    out
}

/// One sample line: `name{labels} value [timestamp] [# exemplar]`.
struct Sample<'a> {
    name: &'a str,
    /// With their braces, as written; empty if none.
    labels: &'a str,
    value: &'a str,
    /// In seconds.
    timestamp: Option<&'a str>,
}

impl<'a> Sample<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let name_end = line.find(['{', ' '])?;
        let name = &line[..name_end];
        let after = &line[name_end..];
        let (labels, rest) = if after.starts_with('{') {
            let close = closing_brace(after)?;
            (&after[..=close], &after[close + 1..])
        } else {
            ("", after)
        };
        // Neither a value nor a timestamp holds a `#`: the exemplar starts at the first.
        let rest = rest.split_once('#').map_or(rest, |(sample, _exemplar)| sample);
        let mut fields = rest.split_whitespace();
        let value = fields.next()?;
        if name.is_empty() {
            return None;
        }
        Some(Self { name, labels, value, timestamp: fields.next() })
    }

    fn write(&self, out: &mut String) {
        self.write_as(out, self.name)
    }

    /// Written under another name.
    fn write_as(&self, out: &mut String, name: &str) {
        let Self { labels, value, .. } = self;
        let _ = write!(out, "{name}{labels} {value}");
        if let Some(seconds) = self.timestamp.and_then(|t| t.parse::<f64>().ok()).filter(|t| t.is_finite()) {
            let _ = write!(out, " {}", (seconds * 1000.0).round() as i64);
        }
        out.push('\n');
    }
}

/// Where the label set starting at `s[0] == '{'` ends, skipping quoted values.
fn closing_brace(s: &str) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, b) in s.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::exemplar::{CounterWithExemplar, HistogramWithExemplars};
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::metrics::info::Info;
    use prometheus_client::registry::Unit;

    use super::*;

    /// Text in, text out.
    #[test]
    fn openmetrics_becomes_the_classic_format() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "a counter takes its samples' _total name; _created and # EOF go",
                "# HELP foo Foo things.\n# TYPE foo counter\nfoo_total 3\nfoo_created 1.7e9\n# EOF\n",
                "# HELP foo_total Foo things.\n# TYPE foo_total counter\nfoo_total 3\n",
            ),
            (
                "a counter with a unit: # UNIT goes, the unit stays before _total",
                "# HELP x_sent_bytes Bytes sent.\n# TYPE x_sent_bytes counter\n# UNIT x_sent_bytes bytes\n\
                 x_sent_bytes_total 10\n# EOF\n",
                "# HELP x_sent_bytes_total Bytes sent.\n# TYPE x_sent_bytes_total counter\nx_sent_bytes_total 10\n",
            ),
            (
                "a gauge with no samples keeps its metadata",
                "# HELP up Up.\n# TYPE up gauge\n# EOF\n",
                "# HELP up Up.\n# TYPE up gauge\n",
            ),
            (
                "label values with spaces, quotes, backslashes, braces and # are copied as they are",
                "# HELP g G.\n# TYPE g gauge\n\
                 g{path=\"a b\",q=\"say \\\"hi\\\" # {x}\",w=\"c:\\\\d\\n\"} 1\ng{path=\"}\"} -2.5\n# EOF\n",
                "# HELP g G.\n# TYPE g gauge\n\
                 g{path=\"a b\",q=\"say \\\"hi\\\" # {x}\",w=\"c:\\\\d\\n\"} 1\ng{path=\"}\"} -2.5\n",
            ),
            (
                "exemplars go, with and without their timestamp",
                "# HELP c C.\n# TYPE c counter\nc_total{a=\"b c\"} 5 # {trace_id=\"abc def\",q=\"#}\"} 1.0 1520879607.789\n\
                 c_total{a=\"d\"} 6 # {trace_id=\"x\"} 2\n# EOF\n",
                "# HELP c_total C.\n# TYPE c_total counter\nc_total{a=\"b c\"} 5\nc_total{a=\"d\"} 6\n",
            ),
            (
                "histograms keep _bucket, _sum and _count; their exemplars and _created go",
                "# HELP h_seconds H.\n# TYPE h_seconds histogram\n# UNIT h_seconds seconds\n\
                 h_seconds_bucket{le=\"0.1\"} 1 # {trace_id=\"t\"} 0.05\nh_seconds_bucket{le=\"+Inf\"} 2\n\
                 h_seconds_sum 0.3\nh_seconds_count 2\nh_seconds_created 1520430000.123\n# EOF\n",
                "# HELP h_seconds H.\n# TYPE h_seconds histogram\n\
                 h_seconds_bucket{le=\"0.1\"} 1\nh_seconds_bucket{le=\"+Inf\"} 2\n\
                 h_seconds_sum 0.3\nh_seconds_count 2\n",
            ),
            (
                "summaries keep their quantiles, _sum and _count",
                "# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 3\ns_count 2\ns_created 1.5e9\n# EOF\n",
                "# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 3\ns_count 2\n",
            ),
            (
                "info becomes a gauge named as its samples",
                "# HELP build Build.\n# TYPE build info\nbuild_info{version=\"1.2\"} 1\n# EOF\n",
                "# HELP build_info Build.\n# TYPE build_info gauge\nbuild_info{version=\"1.2\"} 1\n",
            ),
            (
                "a stateset becomes a gauge",
                "# TYPE door stateset\ndoor{door=\"open\"} 1\ndoor{door=\"shut\"} 0\n# EOF\n",
                "# TYPE door gauge\ndoor{door=\"open\"} 1\ndoor{door=\"shut\"} 0\n",
            ),
            (
                "unknown becomes untyped",
                "# HELP u U.\n# TYPE u unknown\nu 4\n# EOF\n",
                "# HELP u U.\n# TYPE u untyped\nu 4\n",
            ),
            (
                "a gauge histogram becomes a histogram, its _gsum and _gcount _sum and _count",
                "# HELP q Q.\n# TYPE q gaugehistogram\nq_bucket{le=\"1\"} 2\nq_bucket{le=\"+Inf\"} 3\nq_gcount 3\n\
                 q_gsum 4\nq_bucket{k=\"b\",le=\"+Inf\"} 0\nq_gcount{k=\"b\"} 0\nq_gsum{k=\"b\"} 0\n# EOF\n",
                "# HELP q Q.\n# TYPE q histogram\nq_bucket{le=\"1\"} 2\nq_bucket{le=\"+Inf\"} 3\nq_count 3\n\
                 q_sum 4\nq_bucket{k=\"b\",le=\"+Inf\"} 0\nq_count{k=\"b\"} 0\nq_sum{k=\"b\"} 0\n",
            ),
            (
                "timestamps turn from seconds into milliseconds",
                "# TYPE t gauge\nt 1 1520879607.789\nt{a=\"b\"} 2 1520879607\n# EOF\n",
                "# TYPE t gauge\nt 1 1520879607789\nt{a=\"b\"} 2 1520879607000\n",
            ),
            (
                "help keeps \\\\ and \\n escaped; \\\" becomes a plain quote",
                "# HELP h A \\\"quoted\\\" \\\\ back\\nline\n# TYPE h gauge\nh 1\n# EOF\n",
                "# HELP h A \"quoted\" \\\\ back\\nline\n# TYPE h gauge\nh 1\n",
            ),
            (
                "families whose names share a prefix stay apart",
                "# HELP conns Open.\n# TYPE conns gauge\nconns 2\n# HELP conns_refused Refused.\n\
                 # TYPE conns_refused counter\nconns_refused_total{reason=\"cap\"} 1\n# EOF\n",
                "# HELP conns Open.\n# TYPE conns gauge\nconns 2\n# HELP conns_refused_total Refused.\n\
                 # TYPE conns_refused_total counter\nconns_refused_total{reason=\"cap\"} 1\n",
            ),
            (
                "samples without metadata stay as they are; special values pass",
                "loose{a=\"b\"} NaN\nloose +Inf\nother -Inf\n# EOF\n",
                "loose{a=\"b\"} NaN\nloose +Inf\nother -Inf\n",
            ),
            ("empty", "# EOF\n", ""),
        ];
        for (what, input, expected) in cases {
            assert_eq!(to_prometheus_text(input), *expected, "{what}");
        }
    }

    #[test]
    fn the_accept_header_chooses_the_format() {
        use Format::*;
        let cases: &[(Option<&str>, Format)] = &[
            (None, PrometheusText),
            (Some(""), PrometheusText),
            (Some("*/*"), PrometheusText),
            (Some("text/plain"), PrometheusText),
            (Some("text/plain; version=0.0.4"), PrometheusText),
            (Some("application/openmetrics-text"), OpenMetrics),
            (Some("Application/OpenMetrics-Text; version=1.0.0; charset=utf-8"), OpenMetrics),
            // Prometheus 3's default scrape protocols.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
                     application/openmetrics-text;version=0.0.1;q=0.5,\
                     text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
                ),
                OpenMetrics,
            ),
            // Prometheus told to scrape the classic format first.
            (Some("text/plain;version=0.0.4;q=0.5,application/openmetrics-text;version=1.0.0;q=0.4"), PrometheusText),
            (Some("application/openmetrics-text;q=0"), PrometheusText),
            (Some("application/openmetrics-text;q=0.5, text/plain;q=0.5"), OpenMetrics),
            (Some("application/json"), PrometheusText),
        ];
        for (accept, format) in cases {
            assert_eq!(Format::negotiate(*accept), *format, "{accept:?}");
        }
        assert_eq!(OpenMetrics.content_type(), OPENMETRICS);
        assert_eq!(PrometheusText.content_type(), PROMETHEUS_TEXT);
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Labels {
        path: String,
    }

    /// What prometheus-client writes for every kind of metric the components use, in both formats.
    #[test]
    fn a_registry_in_both_formats() {
        let mut r = Registry::with_prefix("sb");
        build_info(&mut r, "1.2.3");
        let received = Counter::<u64>::default();
        r.register_with_unit("rtp_received", "RTP bytes received", Unit::Bytes, received.clone());
        received.inc_by(1500);
        let requests = Family::<Labels, Counter>::default();
        r.register("requests", "Requests", requests.clone());
        requests.get_or_create(&Labels { path: "a \"quoted\" path\\ with spaces".into() }).inc();
        let duration = Histogram::new([0.5, 1.0]);
        r.register("compose_duration_seconds", "Time to compose", duration.clone());
        duration.observe(0.7);
        let traced = HistogramWithExemplars::new([1.0].into_iter());
        r.register("traced_seconds", "Traced", traced.clone());
        traced.observe(0.25, Some(Labels { path: "x y".into() }), None);
        let exemplary = CounterWithExemplar::<Labels>::default();
        r.register("exemplary", "Counted with exemplars", exemplary.clone());
        exemplary.inc_by(2, Some(Labels { path: "# {}".into() }), None);
        r.register("host", "Where it runs", Info::new([("node", "n 1")]));

        let (content_type, openmetrics) = encode(&r, Some("application/openmetrics-text"));
        assert_eq!(content_type, OPENMETRICS);
        assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
        assert!(openmetrics.contains("# TYPE sb_rtp_received_bytes counter\n"), "{openmetrics}");

        let (content_type, text) = encode(&r, Some("text/plain"));
        assert_eq!(content_type, PROMETHEUS_TEXT);
        assert_eq!(
            text,
            "# HELP sb_build_info The version this component was built from (the version label); always 1.\n\
             # TYPE sb_build_info gauge\n\
             sb_build_info{version=\"1.2.3\"} 1\n\
             # HELP sb_rtp_received_bytes_total RTP bytes received.\n\
             # TYPE sb_rtp_received_bytes_total counter\n\
             sb_rtp_received_bytes_total 1500\n\
             # HELP sb_requests_total Requests.\n\
             # TYPE sb_requests_total counter\n\
             sb_requests_total{path=\"a \\\"quoted\\\" path\\\\ with spaces\"} 1\n\
             # HELP sb_compose_duration_seconds Time to compose.\n\
             # TYPE sb_compose_duration_seconds histogram\n\
             sb_compose_duration_seconds_sum 0.7\n\
             sb_compose_duration_seconds_count 1\n\
             sb_compose_duration_seconds_bucket{le=\"0.5\"} 0\n\
             sb_compose_duration_seconds_bucket{le=\"1.0\"} 1\n\
             sb_compose_duration_seconds_bucket{le=\"+Inf\"} 1\n\
             # HELP sb_traced_seconds Traced.\n\
             # TYPE sb_traced_seconds histogram\n\
             sb_traced_seconds_sum 0.25\n\
             sb_traced_seconds_count 1\n\
             sb_traced_seconds_bucket{le=\"1.0\"} 1\n\
             sb_traced_seconds_bucket{le=\"+Inf\"} 1\n\
             # HELP sb_exemplary_total Counted with exemplars.\n\
             # TYPE sb_exemplary_total counter\n\
             sb_exemplary_total 2\n\
             # HELP sb_host_info Where it runs.\n\
             # TYPE sb_host_info gauge\n\
             sb_host_info{node=\"n 1\"} 1\n"
        );
        assert_eq!(encode(&r, None).1, text, "no Accept header: the classic format");
    }
}
