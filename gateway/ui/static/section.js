// A titled panel whose body is redrawn from one API call, showing its error in place.
import { ApiError } from "./api.js";
import { h, replace } from "./dom.js";

export class Section {
  constructor(title, id, ...extra) {
    const panel = title !== null;
    this.body = h("div", {});
    this.error = h("p", { class: "error", role: "alert", hidden: true });
    this.el = h("section", { class: panel ? "panel" : "", id }, title ? h("h2", {}, title) : null, ...extra,
      this.error, this.body);
  }

  // Redraw with render(data) once `load()` answers; an API error is shown instead.
  async update(load, render) {
    let data;
    try {
      data = await load();
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      this.error.textContent = err.message;
      this.error.hidden = false;
      return;
    }
    this.error.hidden = true;
    replace(this.body, render(data));
  }
}

// A line under a button saying what happened.
export function outcome(el, text, ok) {
  el.textContent = text;
  el.className = ok ? "notice" : "error";
  el.hidden = false;
}
