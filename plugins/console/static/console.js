// The console's only script: conveniences, never needed to use a page.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // After a failed form, start where the first problem is.
  const invalid = document.querySelector('[aria-invalid="true"]');
  if (invalid) invalid.focus();
  // A "Copy" button beside a secret shown once.
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.hidden = false;
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      if (!source) return;
      try {
        await navigator.clipboard.writeText(source.textContent.trim());
        button.textContent = "Copied";
      } catch {
        // No clipboard here (an insecure origin, a refused permission): select the
        // text instead, so that a keyboard copy takes it.
        window.getSelection().selectAllChildren(source);
        button.textContent = "Select and copy it";
      }
    });
  }
});
