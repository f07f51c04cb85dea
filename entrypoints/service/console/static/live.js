// Live pages: while #live says data-live, fetch the page again every 2 s and swap #live in place
// (forms being filled stay outside #live).
"use strict";
(function () {
  async function refresh() {
    const current = document.getElementById("live");
    if (!current || !current.dataset.live) return;
    try {
      const response = await fetch(location.href, { credentials: "same-origin" });
      if (response.ok) {
        const fresh = new DOMParser().parseFromString(await response.text(), "text/html").getElementById("live");
        if (fresh) current.replaceWith(fresh);
      }
    } catch (error) { /* the next refresh tries again */ }
    setTimeout(refresh, 2000);
  }
  setTimeout(refresh, 2000);
})();
