// The demo's payment: nothing is charged; paying reports the goal "bill_paid" through the pcrules snippet.
document.addEventListener("DOMContentLoaded", function () {
  "use strict";
  var button = document.querySelector("form.pay button");
  var status = document.querySelector(".pay-status");
  button.addEventListener("click", function () {
    button.disabled = true;
    if (!window.pcrules) { status.textContent = "Paid (the pcrules snippet is not loaded)."; return; }
    window.pcrules.goal("bill_paid", 42.17).then(function (recorded) {
      status.textContent = recorded ? "Paid, thank you." : "Paid (the goal could not be reported).";
    });
  });
});
