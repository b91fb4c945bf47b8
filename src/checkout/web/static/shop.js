// The shop page: place orders (the form and the four scenario buttons) through the JSON API,
// and re-read the orders table, inventory and balances after each (between orders, the shop's
// event stream /shop/events keeps them live: sagaway.js follows every data-live element).
"use strict";
(function () {
  const result = document.getElementById("order-result");
  const orders = document.getElementById("orders");
  const stock = document.getElementById("stock");

  async function refresh() {
    await Promise.all([orders, stock].map((el) => window.Sagaway.refreshFragment(el)));
  }

  function show(text, isError, link) {
    result.replaceChildren();
    const p = document.createElement("p");
    p.className = isError ? "error" : "notice";
    p.textContent = text;
    if (link) {
      const a = document.createElement("a");
      a.href = link;
      a.textContent = " Open its saga timeline";
      p.append(a);
    }
    result.append(p);
  }

  async function place(order) {
    show("Placing the order…", false);
    try {
      const response = await fetch("/orders?wait=10", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(order),
      });
      const body = await response.json();
      if (!response.ok) {
        show("Refused: " + (body.detail || response.statusText), true);
      } else {
        const outcome = body.status + (body.error ? ": " + body.error : "");
        show("Order " + body.order_id + " " + outcome + ".", body.status === "failed",
             body.saga_id ? "/ui/sagas/" + body.saga_id : null);
      }
    } catch (error) {
      show("The request failed: " + error, true);
    }
    await refresh();
  }

  document.querySelectorAll("[data-order]").forEach((button) => {
    button.addEventListener("click", async () => {
      button.disabled = true;
      try { await place(JSON.parse(button.dataset.order)); } finally { button.disabled = false; }
    });
  });

  document.getElementById("order-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(event.target);
    const items = [];
    const address = {};
    for (const [key, value] of data.entries()) {
      if (key.startsWith("qty:")) {
        const quantity = parseInt(value, 10);
        if (quantity > 0) items.push({ product_id: key.slice(4), quantity });
      } else if (key !== "customer_id" && String(value).trim()) {
        address[key] = String(value).trim();
      }
    }
    if (!items.length) { show("Choose a quantity for at least one product.", true); return; }
    const order = { customer_id: data.get("customer_id"), items };
    if (Object.keys(address).length) order.shipping_address = address;
    const button = event.target.querySelector("button[type=submit]");
    button.disabled = true;
    try { await place(order); } finally { button.disabled = false; }
  });

  const reset = document.getElementById("reset");
  if (reset) {
    reset.addEventListener("click", async () => {
      const response = await fetch("/reset", {
        method: "POST",
        headers: { "content-type": "application/json" },  // /reset refuses anything else
        body: "{}",
      });
      show(response.ok ? "Demo data restored." : "Reset refused.", !response.ok);
      await refresh();
    });
  }

})();
