// Draws the overview's two charts (jobs finished and failed per minute over the last hour,
// per hour over the last day) with uPlot, from the series the page carries in data-series
// (the Content-Security-Policy allows no inline script).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const element of document.querySelectorAll(".chart[data-series]")) {
    const series = JSON.parse(element.dataset.series);
    const options = {
      width: element.clientWidth || 560,
      height: 220,
      series: [
        {},
        { label: "finished", stroke: "#2e7d32", fill: "rgba(46,125,50,0.1)" },
        { label: "failed", stroke: "#c62828", fill: "rgba(198,40,40,0.1)" },
      ],
      axes: [{}, { label: "jobs" }],
      scales: { y: { range: (u, min, max) => [0, Math.max(max, 1)] } },
    };
    const chart = new uPlot(options, [series.t, series.finished, series.failures], element);
    element.dataset.drawn = String(chart.data[0].length);
  }
});
