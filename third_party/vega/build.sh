#!/usr/bin/env bash
# Rebuild offline.html: the HTML template `dvc plots show/diff` renders into (.dvc/config
# plots.html_template), with vega, vega-lite and vega-embed inlined, so the page draws without
# network. DVC's own page loads them from a CDN and is blank offline. Versions are the ones DVC's
# renderer (dvc-render) names, so its vega-lite v5 specs render as they would online.
# Needs npm (the npm registry); writes offline.html and the three LICENSE-* files next to this script.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
npm pack --silent vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2 >/dev/null
for pkg in vega-5.20.2 vega-lite-5.2.0 vega-embed-6.18.2; do
  mkdir "$pkg" && tar xzf "$pkg.tgz" -C "$pkg"
  cp "$pkg/package/LICENSE" "$here/LICENSE-${pkg%-*}"
done
{
  cat <<'HTML'
<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- vega 5.20.2, vega-lite 5.2.0, vega-embed 6.18.2 (BSD-3-Clause, University of Washington
         Interactive Data Lab; LICENSE-* in third_party/vega/), inlined so the page works offline.
         No scripts placeholder on purpose: DVC would put its CDN script tags there. -->
HTML
  for js in vega-5.20.2/package/build/vega.min.js vega-lite-5.2.0/package/build/vega-lite.min.js \
            vega-embed-6.18.2/package/build/vega-embed.min.js; do
    if grep -q -e '</script' -e '{plot_divs}' -e '{refresh_tag}' "$js"; then
      echo "build.sh: $js contains text that breaks inlining" >&2; exit 1
    fi
    printf '    <script type="text/javascript">\n'; cat "$js"; printf '\n    </script>\n'
  done
  cat <<'HTML'
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
HTML
} > "$here/offline.html"
echo "build.sh: wrote $here/offline.html"
