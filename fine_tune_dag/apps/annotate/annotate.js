"use strict";
// Shared by the labelling pages (annotate.html, annotate_blind.html, annotate_pairs.html): each calls annotate()
// with what differs. What is shown is model output or the author's writing: it is only ever set with textContent
// (or a text field's value), never parsed as HTML.

/**
 * Runs a labelling page against its server's api/next and api/choice.
 * @param {object} mode
 * @param {string} mode.item the state's key for what is shown, and the id of the element showing it
 * @param {string} mode.itemId the field of the item naming it in a choice
 * @param {string[]} mode.texts the item's fields shown, each in the element of the same id
 * @param {Object<string, string>} mode.keys the side each key chooses (letters in lower case)
 * @param {string} mode.loadFailure what to say when the next item cannot be loaded
 * @param {function(object, string): object} [mode.extra] what else a choice carries, from the item and the side
 * @param {function(object): void} [mode.onShow] called with each item once it is shown
 * @returns {{choose: function(string): void}} for a page's own controls
 */
function annotate({ item, itemId, texts, keys, loadFailure, extra = (shown) => ({ shown_left: shown.shown_left }),
                    onShow = () => {} }) {
  const $ = (id) => document.getElementById(id);
  const buttons = document.querySelectorAll("button[data-side]");
  let current = null;
  let busy = false;

  function show(state) {
    const { done, total } = state.progress;
    $("labeler").textContent = state.labeler;
    $("progress").textContent = `${done} of ${total}`;
    current = state[item];
    $(item).hidden = current === null;
    $("done").hidden = current !== null;
    if (current === null) {
      $("all-answered").hidden = total === 0;
      $("none-yet").hidden = total > 0;
      return;
    }
    texts.forEach((field) => {
      const element = $(field);
      if (element.tagName === "TEXTAREA") element.value = current[field];
      else element.textContent = current[field];
    });
    onShow(current);
  }

  // One request at a time: keys and clicks while one is in flight are ignored, so nothing is saved twice.
  async function send(path, options, failure) {
    busy = true;
    buttons.forEach((button) => { button.disabled = true; });
    try {
      const response = await fetch(path, options);
      const body = await response.json();
      if (!response.ok) throw new Error(body.error || response.statusText);
      $("error").hidden = true;
      show(body);
    } catch (error) {
      $("error").textContent = `${failure}: ${error.message}`;
      $("error").hidden = false;
    } finally {
      busy = false;
      buttons.forEach((button) => { button.disabled = false; });
    }
  }

  function choose(side) {
    if (busy || current === null) return;
    const choice = { [itemId]: current[itemId], side, ...extra(current, side) };
    send("api/choice", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(choice),
    }, "Not saved, press again to retry");
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;  // browser shortcuts, held keys
    if (["INPUT", "TEXTAREA"].includes(event.target.tagName) && !event.target.readOnly) return;  // typing
    const side = keys[event.key.length === 1 ? event.key.toLowerCase() : event.key];
    if (side === undefined) return;
    event.preventDefault();  // arrows would scroll
    choose(side);
  });
  buttons.forEach((button) => button.addEventListener("click", () => choose(button.dataset.side)));
  send("api/next", {}, loadFailure);
  return { choose };
}
