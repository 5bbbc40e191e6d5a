// The two questions the page asks: "are you sure?" and "which token?", as native modal
// dialogs (focus stays inside, Escape cancels, focus returns to where it was).

const byId = (id) => document.getElementById(id);

function ask(dialog, prepare) {
  return new Promise((resolve) => {
    prepare();
    dialog.returnValue = '';
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), {once: true});
    dialog.showModal();
  });
}

/** Resolves to true when the user confirms `text` by pressing `action`. */
export function confirmAction(title, text, action) {
  return ask(byId('confirm-dialog'), () => {
    byId('confirm-title').textContent = title;
    byId('confirm-text').textContent = text;
    byId('confirm-ok').textContent = action;
  });
}

let pending = null; // one token dialog at a time: concurrent 401s share it

/** Ask for a bearer token, saying why (`message`); resolves to it, or null if cancelled. */
export function askToken(message) {
  const dialog = byId('token-dialog');
  const input = byId('token-input');
  byId('token-text').textContent = message;
  if (pending) return pending;
  pending = ask(dialog, () => { input.value = ''; }).then((ok) => {
    pending = null;
    const value = input.value.trim();
    input.value = '';
    return ok && value ? value : null;
  });
  return pending;
}
