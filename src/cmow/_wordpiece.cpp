// cmow._wordpiece: BERT WordPiece tokenization of (mostly ASCII) texts in one call per batch (optional; see setup.py).
//
// It gives exactly the ids the Rust `tokenizers` backend gives for a BertNormalizer + BertPreTokenizer + WordPiece
// pipeline with special tokens added and no truncation or padding, but only for the texts it is sure about: texts of
// ASCII characters and of the non-ASCII `punctuation` characters, with none of the `declined` ones (the first
// characters of the backend's added tokens, which the backend matches before the model sees the text). Any other text
// is declined (None), and the caller tokenizes it with the backend. encode.py builds it from the backend's JSON and
// chooses `punctuation` (characters the backend's normalizer leaves alone and its pre-tokenizer isolates, such as
// curly quotes and dashes) in `compiled_wordpiece`; call it only through there.
//
// The pipeline on ASCII: the normalizer removes control characters (clean_text; without it they are declined) and
// lowercases A-Z (lowercase); the pre-tokenizer splits at whitespace (dropped) and around punctuation (every other
// printable non-alphanumeric character, and each of `punctuation`, is a word of its own); the model replaces a word
// longer than `max_chars` by the unknown token, else splits it into the longest vocabulary entries from the left
// (after the first, entries spelled with the continuing-subword prefix), or the unknown token if some rest has no
// entry; the template puts `head` before the ids and `tail` after them.
//
// Speed: the vocabulary is two open-addressing hash tables (word-initial entries, and continuations without their
// prefix); the GIL is released while texts are tokenized, in blocks shared among threads when the batch is large.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

constexpr Py_ssize_t kTextsPerBlock = 64;     // texts a thread claims at a time
constexpr Py_ssize_t kBytesPerThread = 32768;  // a thread costs tens of microseconds: one per ~100 us of text

// Vocabulary entries by spelling: open addressing, linear probing, at most half full.
class Table {
   public:
    void build(const std::vector<std::pair<std::string, int32_t>>& entries) {
        size_t capacity = 16;
        while (capacity < 2 * entries.size()) capacity *= 2;
        slots_.assign(capacity, Slot{});
        mask_ = capacity - 1;
        for (const auto& [key, id] : entries) {
            if (find(key.data(), key.size()) >= 0) continue;  // cannot happen for a vocabulary (keys are unique)
            Slot slot{hash(key.data(), key.size()), static_cast<uint32_t>(spellings_.size()),
                      static_cast<uint32_t>(key.size()), id};
            spellings_ += key;
            size_t index = slot.hash & mask_;
            while (slots_[index].id >= 0) index = (index + 1) & mask_;
            slots_[index] = slot;
            longest_ = std::max(longest_, key.size());
        }
    }

    // The id of the entry spelled `text[0:size]`, or -1.
    int32_t find(const char* text, size_t size) const {
        const uint64_t key = hash(text, size);
        for (size_t index = key & mask_;; index = (index + 1) & mask_) {
            const Slot& slot = slots_[index];
            if (slot.id < 0) return -1;
            if (slot.hash == key && slot.size == size && std::memcmp(spellings_.data() + slot.offset, text, size) == 0)
                return slot.id;
        }
    }

    size_t longest() const { return longest_; }  // bytes of the longest entry: no longer match exists

   private:
    struct Slot {
        uint64_t hash = 0;
        uint32_t offset = 0, size = 0;
        int32_t id = -1;  // -1: empty
    };

    static uint64_t hash(const char* text, size_t size) {  // FNV-1a
        uint64_t value = 1469598103934665603ull;
        for (size_t i = 0; i < size; ++i) value = (value ^ static_cast<unsigned char>(text[i])) * 1099511628211ull;
        return value;
    }

    std::vector<Slot> slots_;
    std::string spellings_;
    size_t mask_ = 0, longest_ = 0;
};

enum CharClass : uint8_t { kDeclined, kRemoved, kSpace, kPunctuation, kWord };

struct Model {
    Table words, continuations;
    int32_t unk = 0;
    size_t max_chars = 100;
    std::vector<int32_t> head, tail;
    CharClass classes[128];
    char lower[128];
    std::unordered_map<uint32_t, int32_t> punctuation;  // non-ASCII characters that are words of their own: their id

    // Appends the ids of `word` (normalised, non-empty).
    void wordpiece(const char* word, size_t size, std::vector<int32_t>& out) const {
        if (size > max_chars) {  // ASCII: bytes are characters
            out.push_back(unk);
            return;
        }
        const size_t mark = out.size();
        for (size_t start = 0; start < size;) {
            const Table& table = start == 0 ? words : continuations;
            int32_t id = -1;
            size_t end = std::min(size, start + table.longest());
            for (; end > start; --end)
                if ((id = table.find(word + start, end - start)) >= 0) break;
            if (id < 0) {  // some rest has no entry: the whole word is unknown
                out.resize(mark);
                out.push_back(unk);
                return;
            }
            out.push_back(id);
            start = end;
        }
    }

    // Appends the ids of `text` (`length` characters of one of Python's str kinds), or returns false (and appends
    // nothing) when it is declined.
    template <class Char>
    bool encode(const Char* text, size_t length, std::vector<int32_t>& out, std::string& word) const {
        const size_t mark = out.size();
        out.insert(out.end(), head.begin(), head.end());
        word.clear();
        for (size_t i = 0; i < length; ++i) {
            const uint32_t c = text[i];
            if (c >= 128) {
                const auto found = punctuation.find(c);
                if (found == punctuation.end()) {
                    out.resize(mark);
                    return false;
                }
                if (!word.empty()) wordpiece(word.data(), word.size(), out);
                word.clear();
                out.push_back(found->second);
                continue;
            }
            switch (classes[c]) {
                case kDeclined:
                    out.resize(mark);
                    return false;
                case kRemoved:
                    break;
                case kSpace:
                    if (!word.empty()) wordpiece(word.data(), word.size(), out);
                    word.clear();
                    break;
                case kPunctuation:
                    if (!word.empty()) wordpiece(word.data(), word.size(), out);
                    word.assign(1, static_cast<char>(c));
                    wordpiece(word.data(), 1, out);
                    word.clear();
                    break;
                case kWord:
                    word.push_back(lower[c]);
                    break;
            }
        }
        if (!word.empty()) wordpiece(word.data(), word.size(), out);
        out.insert(out.end(), tail.begin(), tail.end());
        return true;
    }
};

// One text: the characters of a Python str, which holds them in 1, 2 or 4 bytes each (its "kind").
struct Text {
    const void* data = nullptr;  // nullptr: not a text to tokenize
    int kind = 0;
    size_t length = 0;

    bool encode(const Model& model, std::vector<int32_t>& out, std::string& word) const {
        switch (kind) {
            case PyUnicode_1BYTE_KIND:
                return model.encode(static_cast<const Py_UCS1*>(data), length, out, word);
            case PyUnicode_2BYTE_KIND:
                return model.encode(static_cast<const Py_UCS2*>(data), length, out, word);
            case PyUnicode_4BYTE_KIND:
                return model.encode(static_cast<const Py_UCS4*>(data), length, out, word);
            default:
                return false;
        }
    }
};

struct Block {
    std::vector<int32_t> ids;      // the block's accepted texts' ids, one after another
    std::vector<int32_t> lengths;  // per text: its number of ids, or -1 when declined
};

struct Job {
    const Model* model;
    std::vector<Text> texts;
    std::vector<Block> blocks;
    std::atomic<size_t> next_block{0};
    std::atomic<size_t> done_blocks{0};
    std::atomic<bool> out_of_memory{false};
};

void work(Job& job) {
    std::string word;
    for (size_t index; (index = job.next_block.fetch_add(1)) < job.blocks.size();) {
        const size_t first = index * kTextsPerBlock, last = std::min(first + kTextsPerBlock, job.texts.size());
        try {
            Block block;  // this thread's own, moved in at the end: neighbouring blocks share cache lines
            block.lengths.reserve(last - first);
            for (size_t text = first; text < last; ++text) {
                const size_t before = block.ids.size();
                const bool accepted = job.texts[text].encode(*job.model, block.ids, word);
                block.lengths.push_back(accepted ? static_cast<int32_t>(block.ids.size() - before) : -1);
            }
            job.blocks[index] = std::move(block);
        } catch (const std::bad_alloc&) {  // the caller raises MemoryError
            job.out_of_memory = true;
        }
        job.done_blocks.fetch_add(1, std::memory_order_release);
    }
}

// As in _kernel.cpp: blocks are claimed by this thread and by helpers it starts; it waits only for blocks that
// helpers claimed, never for a helper to be scheduled (a late helper finds nothing left and exits).
void run(const std::shared_ptr<Job>& job, int threads, Py_ssize_t bytes) {
    const Py_ssize_t helpers =
        std::min<Py_ssize_t>({threads, static_cast<Py_ssize_t>(job->blocks.size()), 1 + bytes / kBytesPerThread}) - 1;
    for (Py_ssize_t i = 0; i < helpers; ++i) {
        try {
            std::thread([job] { work(*job); }).detach();
        } catch (...) {  // no more threads: fewer helpers
            break;
        }
    }
    work(*job);
    while (job->done_blocks.load(std::memory_order_acquire) < job->blocks.size()) std::this_thread::yield();
}

struct WordPieceObject {
    PyObject_HEAD
    Model* model;
    std::vector<PyObject*>* numbers;  // the Python int of every id the model can give, made once
};

bool id_list(PyObject* sequence, std::vector<int32_t>& out) {
    PyObject* fast = PySequence_Fast(sequence, "head and tail must be sequences of token ids");
    if (fast == nullptr) return false;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); ++i) {
        const long id = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (id == -1 && PyErr_Occurred()) break;
        if (id < 0 || id > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "token ids must be non-negative 32-bit integers");
            break;
        }
        out.push_back(static_cast<int32_t>(id));
    }
    Py_DECREF(fast);
    return !PyErr_Occurred();
}

int init(PyObject* self_object, PyObject* args, PyObject*) {
    auto* self = reinterpret_cast<WordPieceObject*>(self_object);
    PyObject *vocab, *head, *tail;
    PyObject* punctuation;
    const char *prefix, *declined;
    Py_ssize_t prefix_size, declined_size, max_chars;
    int unk, lowercase, clean_text;
    if (self->model != nullptr) {  // encode may be running without the GIL: the model must not change under it
        PyErr_SetString(PyExc_RuntimeError, "a WordPiece tokenizer cannot be initialised twice");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "O!is#nppOOs#U", &PyDict_Type, &vocab, &unk, &prefix, &prefix_size, &max_chars,
                          &lowercase, &clean_text, &head, &tail, &declined, &declined_size, &punctuation))
        return -1;
    auto model = std::make_unique<Model>();
    model->unk = unk;
    model->max_chars = static_cast<size_t>(std::max<Py_ssize_t>(max_chars, 0));
    if (!id_list(head, model->head) || !id_list(tail, model->tail)) return -1;
    std::vector<std::pair<std::string, int32_t>> words, continuations;
    int32_t largest = unk;
    PyObject *key, *value;
    for (Py_ssize_t position = 0; PyDict_Next(vocab, &position, &key, &value);) {
        Py_ssize_t size;
        const char* spelling = PyUnicode_AsUTF8AndSize(key, &size);
        const long id = PyLong_AsLong(value);
        if (spelling == nullptr || (id == -1 && PyErr_Occurred())) return -1;
        if (id < 0 || id > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "token ids must be non-negative 32-bit integers");
            return -1;
        }
        words.emplace_back(std::string(spelling, size), static_cast<int32_t>(id));
        if (size >= prefix_size && std::memcmp(spelling, prefix, prefix_size) == 0)
            continuations.emplace_back(std::string(spelling + prefix_size, size - prefix_size),
                                       static_cast<int32_t>(id));
        largest = std::max(largest, static_cast<int32_t>(id));
    }
    for (int32_t id : model->head) largest = std::max(largest, id);
    for (int32_t id : model->tail) largest = std::max(largest, id);
    if (unk < 0) {
        PyErr_SetString(PyExc_ValueError, "token ids must be non-negative 32-bit integers");
        return -1;
    }
    model->words.build(words);
    model->continuations.build(continuations);
    for (int c = 0; c < 128; ++c) {
        const bool control = c < 32 || c == 127;
        CharClass kind = kWord;
        if (c == '\t' || c == '\n' || c == '\r' || c == ' ')
            kind = kSpace;
        else if (control)
            kind = clean_text ? kRemoved : kDeclined;
        else if (!(c >= '0' && c <= '9') && !(c >= 'a' && c <= 'z') && !(c >= 'A' && c <= 'Z'))
            kind = kPunctuation;  // every other printable ASCII character is punctuation to BERT
        model->classes[c] = kind;
        model->lower[c] = static_cast<char>(lowercase && c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    }
    for (Py_ssize_t i = 0; i < declined_size; ++i) {
        const unsigned char c = static_cast<unsigned char>(declined[i]);
        if (c < 128) model->classes[c] = kDeclined;
    }
    for (Py_ssize_t i = 0; i < PyUnicode_GET_LENGTH(punctuation); ++i) {  // a word of one character: itself or [UNK]
        const Py_UCS4 c = PyUnicode_READ_CHAR(punctuation, i);
        if (c < 128) continue;
        PyObject* character = PyUnicode_FromOrdinal(static_cast<int>(c));
        Py_ssize_t size;
        const char* spelling = character ? PyUnicode_AsUTF8AndSize(character, &size) : nullptr;
        if (spelling == nullptr) {
            Py_XDECREF(character);
            return -1;
        }
        const int32_t id = model->max_chars >= 1 ? model->words.find(spelling, size) : -1;
        model->punctuation[c] = id >= 0 ? id : unk;
        Py_DECREF(character);
    }
    auto numbers = std::make_unique<std::vector<PyObject*>>();
    numbers->reserve(static_cast<size_t>(largest) + 1);
    for (int32_t id = 0; id <= largest; ++id) {
        PyObject* number = PyLong_FromLong(id);
        if (number == nullptr) {
            for (PyObject* made : *numbers) Py_DECREF(made);
            return -1;
        }
        numbers->push_back(number);
    }
    self->model = model.release();
    self->numbers = numbers.release();
    return 0;
}

void dealloc(PyObject* self_object) {
    auto* self = reinterpret_cast<WordPieceObject*>(self_object);
    delete self->model;
    if (self->numbers != nullptr)
        for (PyObject* number : *self->numbers) Py_DECREF(number);
    delete self->numbers;
    PyTypeObject* type = Py_TYPE(self_object);
    type->tp_free(self_object);
    Py_DECREF(type);
}

PyObject* encode(PyObject* self_object, PyObject* args) {
    auto* self = reinterpret_cast<WordPieceObject*>(self_object);
    PyObject* texts;
    int threads;
    if (!PyArg_ParseTuple(args, "Oi", &texts, &threads)) return nullptr;
    if (self->model == nullptr) {
        PyErr_SetString(PyExc_RuntimeError, "WordPiece.__init__ was not called");
        return nullptr;
    }
    PyObject* owned = PySequence_Tuple(texts);  // holds the strings while the GIL is released
    if (owned == nullptr) return nullptr;
    const Py_ssize_t count = PyTuple_GET_SIZE(owned);
    auto job = std::make_shared<Job>();
    job->model = self->model;
    job->texts.resize(count);
    Py_ssize_t bytes = 0;
    for (Py_ssize_t i = 0; i < count; ++i) {
        PyObject* text = PyTuple_GET_ITEM(owned, i);
        if (!PyUnicode_Check(text)) {
            PyErr_Format(PyExc_TypeError, "text %zd is a %s, not a str", i, Py_TYPE(text)->tp_name);
            Py_DECREF(owned);
            return nullptr;
        }
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(text) < 0) {
            Py_DECREF(owned);
            return nullptr;
        }
#endif
        Text& entry = job->texts[i];
        entry.data = PyUnicode_DATA(text);
        entry.kind = PyUnicode_KIND(text);
        entry.length = static_cast<size_t>(PyUnicode_GET_LENGTH(text));
        bytes += PyUnicode_GET_LENGTH(text);
    }
    job->blocks.resize((count + kTextsPerBlock - 1) / kTextsPerBlock);
    Py_BEGIN_ALLOW_THREADS
    run(job, std::max(threads, 1), bytes);
    Py_END_ALLOW_THREADS
    Py_DECREF(owned);
    if (job->out_of_memory) return PyErr_NoMemory();
    PyObject* result = PyList_New(count);
    if (result == nullptr) return nullptr;
    const std::vector<PyObject*>& numbers = *self->numbers;
    Py_ssize_t index = 0;
    for (const Block& block : job->blocks) {
        const int32_t* ids = block.ids.data();
        for (int32_t length : block.lengths) {
            PyObject* row;
            if (length < 0) {
                row = Py_None;
                Py_INCREF(row);
            } else {
                row = PyList_New(length);
                if (row == nullptr) {
                    Py_DECREF(result);
                    return nullptr;
                }
                for (int32_t j = 0; j < length; ++j) {
                    PyObject* number = numbers[ids[j]];
                    Py_INCREF(number);
                    PyList_SET_ITEM(row, j, number);
                }
                ids += length;
            }
            PyList_SET_ITEM(result, index++, row);
        }
    }
    return result;
}

PyMethodDef wordpiece_methods[] = {
    {"encode", encode, METH_VARARGS,
     "encode(texts, threads): per text, its token ids with the template's special tokens, or None where the text is "
     "declined (it holds a character that is neither ASCII nor in `punctuation`, or a declined one); up to `threads` "
     "threads for a large batch."},
    {nullptr, nullptr, 0, nullptr},
};

PyType_Slot wordpiece_slots[] = {
    {Py_tp_doc,
     const_cast<char*>(
         "WordPiece(vocab, unk_id, prefix, max_chars, lowercase, clean_text, head, tail, declined, punctuation): a "
         "BERT WordPiece tokenizer for ASCII texts (and `punctuation`). Private: encode.py builds it from a "
         "tokenizers backend (compiled_wordpiece).")},
    {Py_tp_init, reinterpret_cast<void*>(init)},
    {Py_tp_new, reinterpret_cast<void*>(PyType_GenericNew)},
    {Py_tp_dealloc, reinterpret_cast<void*>(dealloc)},
    {Py_tp_methods, wordpiece_methods},
    {0, nullptr},
};

PyType_Spec wordpiece_spec = {"cmow._wordpiece.WordPiece", sizeof(WordPieceObject), 0, Py_TPFLAGS_DEFAULT,
                              wordpiece_slots};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT,
                          "_wordpiece",
                          "CMOW's compiled WordPiece tokenizer (optional).",
                          -1,
                          nullptr,   // methods: the WordPiece type has them
                          nullptr,   // slots
                          nullptr,   // traverse
                          nullptr,   // clear
                          nullptr};  // free

}  // namespace

PyMODINIT_FUNC PyInit__wordpiece() {
    PyObject* module = PyModule_Create(&module_def);
    if (module == nullptr) return nullptr;
    PyObject* type = PyType_FromSpec(&wordpiece_spec);
    if (type == nullptr || PyModule_AddObject(module, "WordPiece", type) < 0) {
        Py_XDECREF(type);
        Py_DECREF(module);
        return nullptr;
    }
    return module;
}
