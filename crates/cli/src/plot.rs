//! A dependency-free SVG line plot of the training (and validation) loss from `metrics.jsonl`.
use anyhow::Result;
use std::fmt::Write;
use std::path::Path;

pub fn loss_curve_svg(metrics: &Path, out: &Path) -> Result<()> {
    let text = std::fs::read_to_string(metrics).unwrap_or_default();
    let mut train = Vec::new();
    let mut val = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let step = v.get("step").and_then(|s| s.as_f64()).unwrap_or(0.0);
        if let Some(l) = v.get("loss").and_then(|s| s.as_f64()) {
            train.push((step, l));
        }
        if let Some(l) = v.get("val_loss").and_then(|s| s.as_f64()) {
            val.push((step, l));
        }
    }
    if train.is_empty() {
        return Ok(());
    }
    let (w, h, pad) = (720.0, 400.0, 50.0);
    let max_x = train.iter().chain(&val).map(|p| p.0).fold(1.0, f64::max);
    let max_y = train.iter().chain(&val).map(|p| p.1).fold(f64::MIN, f64::max);
    let min_y = train.iter().chain(&val).map(|p| p.1).fold(f64::MAX, f64::min).min(max_y - 1e-6);
    let sx = |x: f64| pad + x / max_x * (w - 2.0 * pad);
    let sy = |y: f64| h - pad - (y - min_y) / (max_y - min_y) * (h - 2.0 * pad);
    let path = |pts: &[(f64, f64)]| -> String {
        pts.iter().enumerate().map(|(i, p)| format!("{}{:.1},{:.1}", if i == 0 { "M" } else { " L" }, sx(p.0), sy(p.1))).collect()
    };
    let mut s = String::new();
    writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#)?;
    writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#)?;
    writeln!(s, r#"<line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#, h - pad, w - pad, h - pad)?;
    writeln!(s, r#"<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{}" stroke="black"/>"#, h - pad)?;
    writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">step</text>"#, w / 2.0, h - 15.0)?;
    writeln!(s, r#"<text x="{pad}" y="{}" text-anchor="start">{max_y:.3}</text>"#, pad - 8.0)?;
    writeln!(s, r#"<text x="{pad}" y="{}" text-anchor="start">{min_y:.3}</text>"#, h - pad + 15.0)?;
    writeln!(s, r#"<text x="{}" y="{}" text-anchor="end">{max_x}</text>"#, w - pad, h - pad + 15.0)?;
    writeln!(s, r##"<path d="{}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>"##, path(&train))?;
    if !val.is_empty() {
        writeln!(s, r##"<path d="{}" fill="none" stroke="#d62728" stroke-width="2" stroke-dasharray="5,3"/>"##, path(&val))?;
        for p in &val {
            writeln!(s, r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#d62728"/>"##, sx(p.0), sy(p.1))?;
        }
    }
    writeln!(s, r##"<text x="{}" y="{}" fill="#1f77b4">train loss</text><text x="{}" y="{}" fill="#d62728">validation loss</text>"##, w - 200.0, pad, w - 200.0, pad + 16.0)?;
    writeln!(s, "</svg>")?;
    lowrank_models::weights::write_atomic(out, s.as_bytes())?;
    Ok(())
}
