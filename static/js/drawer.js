// ---- drawer on phones ----
import { $ } from "./dom.js";

export function closeDrawer() {
  $("sidebar").classList.remove("open");
  $("rooms-toggle").setAttribute("aria-expanded", "false");
}

export function toggleDrawer() {
  const open = $("sidebar").classList.toggle("open");
  $("rooms-toggle").setAttribute("aria-expanded", String(open));
}
