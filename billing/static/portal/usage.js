// The usage page's charts (Chart.js, vendored): charges by day, and by model stacked per
// day. Amounts arrive as exact decimal strings; they become numbers only to be drawn.
(function () {
  "use strict";
  const days = document.getElementById("chart-days");
  if (!days) return;
  const palette = ["#1f5fbf", "#2e9d6b", "#c77d12", "#8b4ec7", "#c23b6b", "#2a9bb7", "#6b7a8f"];
  let charts = [];

  function canvasIn(holder) {
    holder.innerHTML = "";
    const canvas = document.createElement("canvas");
    holder.appendChild(canvas);
    return canvas;
  }

  let drawn = "";

  function draw(data) {
    const text = JSON.stringify(data);
    if (text === drawn) return;  // unchanged: no redraw, no flicker
    drawn = text;
    charts.forEach((c) => c.destroy());
    charts = [];
    const labels = data.days.map((d) => d.day);
    const money = { callbacks: { label: (ctx) => `${ctx.dataset.label}: ${ctx.raw} ${data.currency}` } };
    charts.push(new Chart(canvasIn(days), {
      type: "bar",
      data: { labels, datasets: [{ label: "Charged", data: data.days.map((d) => Number(d.amount)),
        backgroundColor: palette[0] }] },
      options: { responsive: true, maintainAspectRatio: false, animation: false,
        scales: { y: { title: { display: true, text: data.currency } } },
        plugins: { legend: { display: false }, tooltip: money } },
    }));
    const byModel = {};
    const modelDays = [...new Set(data.models.map((m) => m.day))].sort();
    data.models.forEach((m) => {
      byModel[m.model] = byModel[m.model] || {};
      byModel[m.model][m.day] = Number(m.amount);
    });
    // The total the rows below add up to (the server splits the rounding between them).
    document.getElementById("usage-total").textContent = data.total;
    document.getElementById("models-table-total").textContent = data.total;
    const models = document.getElementById("chart-models");
    const body = document.querySelector("#models-table tbody");
    body.innerHTML = "";
    data.totals.forEach((t) => {
      const row = body.insertRow();
      [t.model, t.tokens, t.amount].forEach((text, i) => {
        const cell = row.insertCell();
        cell.textContent = text;
        if (i) cell.className = "num";
      });
    });
    if (!data.models.length) {
      models.innerHTML = '<p class="muted">No LLM usage this period yet.</p>';
      return;
    }
    charts.push(new Chart(canvasIn(models), {
      type: "bar",
      data: { labels: modelDays, datasets: Object.keys(byModel).map((model, i) => ({
        label: model, data: modelDays.map((d) => byModel[model][d] || 0),
        backgroundColor: palette[i % palette.length] })) },
      options: { responsive: true, maintainAspectRatio: false, animation: false,
        scales: { x: { stacked: true },
                  y: { stacked: true, title: { display: true, text: data.currency } } },
        plugins: { tooltip: money } },
    }));
  }

  async function refresh() {
    const response = await fetch(days.dataset.source, { credentials: "same-origin" });
    if (response.ok) draw(await response.json());
  }
  refresh();  // a deferred script runs once the page is parsed
  setInterval(refresh, 2000);  // redrawn only when the figures changed
})();
